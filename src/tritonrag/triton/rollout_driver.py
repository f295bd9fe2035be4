"""Drive a guarded rollout: scrape /metrics, evaluate the guards on the current window, write the decision.

The same driver runs in the `canary rollout` CLI (scraping every replica's /metrics, summed)
and inside each router replica (its rollout mode, scraping its own server). Several may run
at once against one weights file; they agree through the file:

- a lock file beside it (`flock`) makes each read-decide-write one step, so no decision is
  written over one it did not see;
- a lease in the rollout state names the one driver that evaluates now; it renews the lease
  every evaluation, and another driver takes over once it lapses (its replica restarted);
- a window belongs to one revision of the state: a new step, a takeover, a restart or a
  counter reset (a replica restarted) starts a new window. A driver never decides on
  traffic from before the step began.

A decision other than hold is logged with its numbers (`log`), and the whole state (guards,
last decision, history) goes into the file, where the routers' metrics and `canary status`
read it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tritonrag.triton.canary import RoutingConfig, read_file, write_config
from tritonrag.triton.guards import VersionWindow, evaluate, stable_numbers
from tritonrag.triton.prom import Samples, grown, was_reset
from tritonrag.triton.rollout import HOLD, Decision, RolloutPlan, RolloutState, apply, cancel, decide, start


def driver_id(kind: str) -> str:
    """Who drives: kind, host and process (shown in the state and the log)."""
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the weights file's lock (a `.<name>.lock` beside it) for one read-modify-write."""
    lock_path = path.parent / f".{path.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_state(path: Path) -> tuple[RoutingConfig, RolloutState | None]:
    config, rollout = read_file(path)
    return config, RolloutState.from_dict(rollout) if rollout else None


def write_state(path: Path, config: RoutingConfig, state: RolloutState | None) -> None:
    write_config(path, config, state.to_dict() if state else None)


def begin(
    path: Path, config: RoutingConfig, canary_version: int, plan: RolloutPlan, holder: str | None
) -> RolloutState:
    """Write a new rollout at its first step (holder: the driver that claims it; None leaves it to the routers)."""
    with locked(path):
        now = time.time()
        config, state = start(config, canary_version, plan, now)
        if holder:
            state = dataclasses.replace(state, lease={"holder": holder, "until": now + plan.lease_s})
        write_state(path, config, state)
    return state


def stop_by_hand(path: Path, new_config: RoutingConfig, why: str) -> None:
    """Write a split set by hand; a running rollout is cancelled, saying why (the operator wins)."""
    with locked(path):
        state = read_state(path)[1] if path.exists() else None
        if state is not None and state.running:
            state = cancel(state, why, time.time())
        write_state(path, new_config, state)


class RolloutDriver:
    """Evaluates the running rollout in the weights file at `path` on windows of `scrape()`'s samples."""

    def __init__(
        self,
        path: Path | str,
        scrape: Callable[[], Samples],
        holder: str,
        model: str = "generator",
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path, self.scrape, self.holder, self.model = Path(path), scrape, holder, model
        self.log, self.clock = log, clock
        self._base: Samples | None = None
        self._base_at = 0.0
        self._revision: int | None = None

    def tick(self) -> Decision | None:
        """One evaluation; None when there is nothing to drive (no running rollout, another's lease)."""
        if not self._worth_scraping():
            self._base = None
            return None
        samples = self.scrape()  # outside the lock: a slow scrape must not block the others
        with locked(self.path):
            if not self.path.exists():
                return None
            config, state = read_state(self.path)
            now = self.clock()
            if state is None or not state.running or not self._may_drive(state, now):
                self._base = None
                return None
            lease = {"holder": self.holder, "until": now + state.plan.lease_s}
            if self._base is None or state.revision != self._revision or was_reset(samples, self._base):
                self._base, self._base_at, self._revision = samples, now, state.revision
                window = {"started_at": now, "evaluated_at": now, "driver": self.holder}
                write_state(self.path, config, dataclasses.replace(state, lease=lease, window=window, guards=()))
                return None
            decision, config, state = self._evaluate(config, dataclasses.replace(state, lease=lease), samples, now)
            write_state(self.path, config, state)
        if decision.action != HOLD:
            self.log(f"rollout of version {state.canary_version}: {decision.describe()}")
        return decision

    def _worth_scraping(self) -> bool:
        """A cheap look (no lock, no scrape): is there a running rollout this driver may evaluate?"""
        try:
            state = read_state(self.path)[1]
        except (OSError, ValueError):
            return False
        return state is not None and state.running and self._may_drive(state, self.clock())

    def _may_drive(self, state: RolloutState, now: float) -> bool:
        lease = state.lease
        return lease is None or lease.get("holder") == self.holder or float(lease.get("until", 0)) < now

    def _evaluate(
        self, config: RoutingConfig, state: RolloutState, samples: Samples, now: float
    ) -> tuple[Decision, RoutingConfig, RolloutState]:
        window = grown(samples, self._base or {})
        stable = VersionWindow.of(window, state.stable_version, self.model)
        canary = VersionWindow.of(window, state.canary_version, self.model)
        limits = state.plan.thresholds
        guards = evaluate(canary, stable, limits, shadow=state.current.is_shadow, baseline=state.baseline)
        elapsed = now - self._base_at
        decision = decide(state, guards, elapsed, canary.requests, now, self.holder)
        state = dataclasses.replace(
            state,
            window={
                "started_at": self._base_at,
                "evaluated_at": now,
                "driver": self.holder,
                "canary_requests": canary.requests,
                "stable_requests": stable.requests,
                "shadow_compared": canary.compared,
            },
        )
        config, state = apply(config, state, decision, stable_numbers(stable, limits.min_samples))
        return decision, config, state

    def run(self, stop: Callable[[], bool] = lambda: False, on_tick: Callable[[Decision | None], None] | None = None):
        """Tick every plan interval until the rollout is no longer running (or `stop()`); the final state."""
        while not stop():
            try:
                decision = self.tick()
            except OSError as exc:  # a replica unreachable (requests' errors are OSErrors): try again next interval
                self.log(f"rollout: no evaluation this interval: {exc}")
                decision = None
            if on_tick:
                on_tick(decision)
            _, state = read_state(self.path)
            if state is None or not state.running:
                return state
            time.sleep(state.plan.interval_s)
        return read_state(self.path)[1]


METRICS_URL_ENV = "TRITONRAG_METRICS_URL"  # the server's own /metrics, for a router that drives rollouts


def metrics_url(parameter: str) -> str:
    """The /metrics address a router's driver scrapes: $TRITONRAG_METRICS_URL, else its `metrics_url` parameter."""
    return os.environ.get(METRICS_URL_ENV, "").strip() or parameter


def drive_until(driver: RolloutDriver, stopped, idle_s: float = 1.0) -> None:
    """A router's driver thread: evaluate while a rollout runs (every plan interval), look every `idle_s`
    otherwise, until `stopped` (a threading.Event) is set. A failed evaluation is logged once per cause."""
    reported = None
    interval = idle_s
    while not stopped.wait(interval):
        try:
            driver.tick()
            state = read_state(driver.path)[1] if driver.path.exists() else None
            interval = state.plan.interval_s if state is not None and state.running else idle_s
            reported = None
        except (OSError, ValueError) as exc:
            if str(exc) != reported:
                reported = str(exc)
                driver.log(f"rollout: cannot evaluate: {exc}")
            interval = idle_s
