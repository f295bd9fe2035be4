"""Run the soak: worker threads send the scenario mix until time is up while a timeline adds the chaos.

The timeline (fractions of the run): a burst every 40 s from 15% to 68% (two in a 2-minute run, the
second while the canary takes half), the canary at 50% from 30% and back to 0% at 55%, the
generator's stable version's stub killed at 70% and traffic moved to the other version (`canary
promote`) at 78%.
A watcher asks the killed version (a pinned `llm` request) every few seconds whether it serves
again. Each call's outcome goes into the ledger with the phase it started in.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.utils import InferenceServerException

from tritonrag_bench.soak import chaos, probes
from tritonrag_bench.soak.calls import Call, Limits
from tritonrag_bench.soak.outcomes import INTERNAL, INVALID_ARG, OK, STUB_DEAD, Ledger, Outcome, code_of_grpc
from tritonrag_bench.soak.scenarios import Scenario, Target, llm_stream, mix, rag_stream


@dataclass
class Settings:
    minutes: float = 2.0
    concurrency: int = 8  # worker threads, each with one call in flight
    timeout_s: float = 60.0  # the Triton timeout every call carries (0: none); the router adds 30 s to bound it
    # A call not ended by then is HUNG: past the router's bound above, with a minute for the stages before it.
    deadline_s: float = 180.0
    burst: int = 96  # streams sent at once in each burst (the router takes 64)
    burst_every_s: float = 40.0
    canary: bool = True  # flip the canary weight mid-run (needs generator versions 1 and 2)
    kill: bool = True  # SIGKILL the stable generator version's stub mid-run
    kill_version: int = 1
    drain_s: float = 120.0  # how long the engine may take to drain after the traffic stops
    seed: int = 0
    progress_s: float = 10.0


@dataclass
class Endpoints:
    """Where the server is, its weights file, and (when known) its process, for the kill and crash checks."""

    grpc: str
    http: str
    metrics: str
    weights_file: Path
    server_pid: int | None = None
    alive: Callable[[], bool] = lambda: True  # False once our own server process has exited
    log_tail: Callable[[], str] = lambda: ""


@dataclass
class Event:
    at: float  # seconds since the soak started
    what: str
    detail: str = ""


@dataclass
class KillWatch:
    """What happened to the killed version: when it was killed, and whether and when it served again."""

    version: int
    killed_at: float | None = None
    detail: str = ""
    probes: list[tuple[float, str, str]] = field(default_factory=list)  # (at, code, message)
    recovered_at: float | None = None


class Soak:
    def __init__(self, settings: Settings, endpoints: Endpoints) -> None:
        self.settings, self.endpoints = settings, endpoints
        limits = Limits(settings.deadline_s, int(settings.timeout_s * 1e6))
        self.target = Target(endpoints.grpc, endpoints.http, limits)
        self.ledger = Ledger()
        self.events: list[Event] = []
        self.phase = "start"
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.crashed: str | None = None
        self.watch = KillWatch(settings.kill_version)
        self.t0 = time.monotonic()
        self.duration = settings.minutes * 60.0

    # ---- one call --------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, scenario: Scenario, rng: random.Random) -> Outcome:
        self.ledger.started()
        phase, start = self.phase, self.now()
        try:
            call = scenario.run(self.target, rng)
        except InferenceServerException as exc:  # the call itself failed (server gone, connection refused)
            call = Call(code_of_grpc(exc.status(), exc.message()), self.now() - start, message=exc.message()[:300])
        except Exception as exc:  # noqa: BLE001 - a client-side failure is an outcome too, never a dead worker
            call = Call(INTERNAL, self.now() - start, message=f"client: {exc!r}"[:300])
        outcome = Outcome(
            scenario.name,
            scenario.route,
            call.code,
            start,
            call.total,
            call.ttft,
            call.responses,
            call.served_version,
            call.message,
            phase,
        )
        outcome.expected = self.acceptable(scenario, call)
        self.ledger.add(outcome)
        return outcome

    def acceptable(self, scenario: Scenario, call: Call) -> bool:
        """The scenario accepts this code (an INVALID_ARG naming its field, not internal); after the kill,
        a call that may reach the killed version may meet its dead stub."""
        if call.code == STUB_DEAD:
            return self.watch.killed_at is not None and scenario.field is None
        if call.code not in scenario.accept:
            return False
        if call.code == INVALID_ARG and scenario.field:
            message = call.message.lower()
            return scenario.field.lower() in message and "internal" not in message
        return True

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.spawn_workers(self.settings.concurrency)
        for target in (self.timeline, self.progress):
            self.threads.append(threading.Thread(target=target, daemon=True))
            self.threads[-1].start()
        while self.now() < self.duration and not self.stop.is_set():
            time.sleep(0.5)
        self.stop.set()
        index = 0
        while index < len(self.threads):  # every call ends by its deadline, so these joins end too
            self.threads[index].join(self.settings.deadline_s + 30)
            index += 1
        self.note("traffic stopped", f"{len(self.ledger.outcomes)} calls, {self.ledger.in_flight} still open")

    def spawn_workers(self, count: int) -> None:
        """`count` more workers, each sending one call of the mix after another until the run ends."""
        scenarios = mix()
        weights = [s.weight for s in scenarios]

        def worker(index: int) -> None:
            rng = random.Random(self.settings.seed * 1000 + index)
            while not self.stop.is_set() and self.now() < self.duration:
                self.record(rng.choices(scenarios, weights)[0], rng)

        first = len(self.threads)
        for index in range(first, first + count):
            self.threads.append(threading.Thread(target=worker, args=(index,), daemon=True))
            self.threads[-1].start()

    def note(self, what: str, detail: str = "") -> None:
        event = Event(round(self.now(), 1), what, detail)
        self.events.append(event)
        print(f"[{event.at:6.1f}s] {what}{': ' + detail if detail else ''}", flush=True)

    def at(self, fraction: float) -> bool:
        """Sleep until `fraction` of the run; False if the soak stopped first."""
        while self.now() < fraction * self.duration:
            if self.stop.wait(0.25):
                return False
        return not self.stop.is_set()

    def timeline(self) -> None:
        steps: list[tuple[float, Callable[[], None]]] = [(f, self.burst) for f in self.burst_fractions()]
        if self.settings.canary:
            steps += [(0.30, lambda: self.split("canary 50%", "set", "--canary-weight", "0.5"))]
            steps += [(0.55, lambda: self.split("canary 0%", "rollback"))]
        if self.settings.kill:
            steps += [(0.70, self.kill), (0.78, lambda: self.split("failover: canary promoted", "promote"))]
        for fraction, action in sorted(steps, key=lambda step: step[0]):
            if not self.at(fraction):
                return
            action()

    def burst_fractions(self) -> list[float]:
        """A burst every `burst_every_s` from 15% of the run until 68% (before the kill): two in a 2-minute run
        (one while the canary takes half), about one every 40 s in a longer one."""
        first, last = 0.15 * self.duration, 0.68 * self.duration
        count = max(1, int((last - first) // self.settings.burst_every_s) + 1)
        return [(first + i * self.settings.burst_every_s) / self.duration for i in range(count)]

    def burst(self) -> None:
        size = self.settings.burst
        self.note("burst", f"{size} streams at once (llm, every sixth rag)")
        llm = Scenario("burst_llm", "grpc llm", 0, lambda t, r: llm_stream(t, r, 24))
        rag = Scenario("burst_rag", "grpc rag", 0, lambda t, r: rag_stream(t, r, 16))
        rngs = [random.Random(self.settings.seed * 7919 + len(self.events) * 1000 + i) for i in range(size)]
        with ThreadPoolExecutor(size) as pool:
            outcomes = list(pool.map(lambda i: self.record(rag if i % 6 == 5 else llm, rngs[i]), range(size)))
        codes = {code: sum(o.code == code for o in outcomes) for code in sorted({o.code for o in outcomes})}
        self.note("burst done", ", ".join(f"{c} {n}" for c, n in codes.items()))

    def split(self, phase: str, *command: str) -> None:
        status, text = chaos.canary_cli(self.endpoints.weights_file, self.endpoints.http, *command)
        self.phase = phase
        self.note(f"canary {' '.join(command)}", f"exit {status}: {text}")

    def kill(self) -> None:
        if self.endpoints.server_pid is None:
            self.note("kill skipped", "the server's process is not on this machine (or not found)")
            return
        self.watch.detail = chaos.kill_stub(self.endpoints.server_pid, self.settings.kill_version)
        self.watch.killed_at = round(self.now(), 1)
        self.phase = f"generator v{self.settings.kill_version} stub killed"
        self.note("kill", self.watch.detail)
        threading.Thread(target=self.watch_killed, daemon=True).start()
        # The calls in flight in the dead stub hold their workers until the router's bound ends them.
        self.spawn_workers(self.settings.concurrency)
        self.note("workers added", f"{self.settings.concurrency} more, so traffic goes on past the stuck calls")

    def watch_killed(self) -> None:
        """Ask the killed version every 5 s (a pinned llm request) until it serves again or the soak ends."""
        rng = random.Random(self.settings.seed)
        while not self.stop.wait(5.0):
            call = probes.pinned(self.target, self.settings.kill_version, rng)
            self.watch.probes.append((round(self.now(), 1), call.code, call.message[:160]))
            if call.code == OK:
                self.watch.recovered_at = round(self.now(), 1)
                self.note(f"generator v{self.settings.kill_version} serves again")
                return

    def progress(self) -> None:
        while not self.stop.wait(self.settings.progress_s):
            if not self.endpoints.alive():
                self.crashed = self.endpoints.log_tail()
                self.note("tritonserver exited", "stopping the soak; its log's tail is in the report")
                self.stop.set()
                return
            codes = self.ledger.codes()
            shown = " ".join(f"{code} {codes[code]}" for code in sorted(codes))
            gauges = probes.engine_line(self.endpoints.metrics)
            done, open_ = sum(codes.values()), self.ledger.in_flight
            print(f"[{self.now():6.1f}s] {self.phase} | {done} done, {open_} open | {shown} | {gauges}", flush=True)
