"""Guarded rollout without a server: guards on windows of /metrics samples, step decisions, the driver over a
real weights file (lock, lease, windows, restarts), shadow agreement, the weights file under a ConfigMap swap."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest

from tritonrag import metrics
from tritonrag.triton import canary
from tritonrag.triton.canary import RoutingConfig, WeightsFile, canary_file_path, read_config, write_config
from tritonrag.triton.guards import PASS, TRIP, WAIT, Thresholds, VersionWindow, evaluate
from tritonrag.triton.prom import Samples, grown, parse_metrics, total, was_reset
from tritonrag.triton.rollout import (
    ADVANCE,
    CANCELLED,
    DEFAULT_STEPS,
    HOLD,
    PROMOTE,
    PROMOTED,
    ROLLBACK,
    ROLLED_BACK,
    RolloutPlan,
    RolloutState,
    Step,
    apply,
    decide,
    parse_steps,
    start,
)
from tritonrag.triton.rollout_driver import RolloutDriver, begin, read_state, stop_by_hand
from tritonrag.triton.shadow import Agreement, ShadowPair, compare, is_greedy
from tritonrag_clients.rollout_view import render_rollout

BUCKETS = metrics.LATENCY_BUCKETS
LIMITS = Thresholds(min_samples=10)


# ---- synthetic /metrics: what the router and the engine export, per version ----


class FakeServer:
    """Cumulative counters and latency histograms for versions, as Triton's /metrics shows them."""

    def __init__(self) -> None:
        self.samples: Samples = {}

    def _add(self, name: str, value: float, **labels: str) -> None:
        key = (name, frozenset({"model": "generator", **labels}.items()))
        self.samples[key] = self.samples.get(key, 0.0) + value

    def serve(self, version: int, n: int, failures: int = 0, ttft: float = 0.2, itl: float = 0.04, mode="random"):
        v = str(version)
        self._add(metrics.ROUTER_REQUESTS.name, n, version=v, mode=mode)
        if failures:
            self._add(metrics.ROUTER_FAILURES.name, failures, version=v, mode=mode)
        for family, latency, count in ((metrics.TTFT, ttft, n - failures), (metrics.ITL, itl, 10 * (n - failures))):
            for bound in (*BUCKETS, float("inf")):
                le = "+Inf" if bound == float("inf") else str(bound)
                self._add(f"{family.name}_bucket", count if latency <= bound else 0, version=v, le=le)
            self._add(f"{family.name}_count", count, version=v)

    def compare(self, version: int, n: int, exact: int, primary_chars: int, shadow_chars: int) -> None:
        v = str(version)
        self._add(metrics.ROUTER_SHADOW_COMPARED.name, n, version=v)
        self._add(metrics.ROUTER_SHADOW_EXACT.name, exact, version=v)
        self._add(metrics.ROUTER_SHADOW_CHARS.name, primary_chars, version=v, side="primary")
        self._add(metrics.ROUTER_SHADOW_CHARS.name, shadow_chars, version=v, side="shadow")

    def scrape(self) -> Samples:
        return dict(self.samples)


def window(server: FakeServer, version: int) -> VersionWindow:
    return VersionWindow.of(server.scrape(), version)


# ---- guards ----


def test_a_healthy_canary_passes_every_guard():
    server = FakeServer()
    server.serve(1, 200, failures=2)
    server.serve(2, 40, failures=1, ttft=0.25, itl=0.05)
    results = {g.name: g for g in evaluate(window(server, 2), window(server, 1), LIMITS)}
    assert {g.state for g in results.values()} == {PASS}
    assert results["error_rate"].value == pytest.approx(1 / 40)
    assert results["error_rate"].threshold == pytest.approx(0.01 + 0.02)
    assert 0.25 < results["ttft_p95"].value <= 0.5 and 0.25 < results["ttft_p95"].threshold <= 0.75


@pytest.mark.parametrize(
    "canary, tripped",
    [
        (dict(failures=12), "error_rate"),  # 12/40 against 0/200
        (dict(ttft=4.0), "ttft_p95"),  # a slow canary: seconds to the first token
        (dict(itl=0.9), "itl_p95"),
    ],
)
def test_a_worse_canary_trips_the_guard_that_measures_it(canary, tripped):
    server = FakeServer()
    server.serve(1, 200)
    server.serve(2, 40, **canary)
    results = {g.name: g for g in evaluate(window(server, 2), window(server, 1), LIMITS)}
    assert [name for name, g in results.items() if g.state == TRIP] == [tripped]
    assert results[tripped].value > results[tripped].threshold


def test_too_few_samples_wait_and_a_baseline_stands_in_for_an_idle_stable():
    server = FakeServer()
    server.serve(1, 200)
    server.serve(2, 5, failures=5)
    assert {g.state for g in evaluate(window(server, 2), window(server, 1), LIMITS)} == {WAIT}
    idle = FakeServer()
    idle.serve(2, 30)
    assert {g.state for g in evaluate(window(idle, 2), window(idle, 1), LIMITS)} == {WAIT}
    baseline = {"error_rate": 0.0, "ttft_p95": 0.2, "itl_p95": 0.04}
    assert {g.state for g in evaluate(window(idle, 2), window(idle, 1), LIMITS, baseline=baseline)} == {PASS}


def test_shadow_agreement_guards():
    server = FakeServer()
    server.serve(1, 100)
    server.serve(2, 30, mode="shadow")
    server.compare(2, 30, exact=29, primary_chars=3000, shadow_chars=3100)
    results = {g.name: g for g in evaluate(window(server, 2), window(server, 1), LIMITS, shadow=True)}
    assert results["shadow_exact_match"].state == PASS and results["shadow_exact_match"].value == pytest.approx(29 / 30)
    assert results["shadow_length_ratio"].state == PASS
    server.compare(2, 30, exact=0, primary_chars=3000, shadow_chars=600)  # another model: different, shorter
    results = {g.name: g for g in evaluate(window(server, 2), window(server, 1), LIMITS, shadow=True)}
    assert results["shadow_exact_match"].state == TRIP and results["shadow_length_ratio"].state == TRIP
    assert "shadow_exact_match" not in {g.name for g in evaluate(window(server, 2), window(server, 1), LIMITS)}


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="max_latency_ratio"):
        Thresholds(max_latency_ratio=0.5)
    with pytest.raises(ValueError, match="unknown thresholds: p99"):
        Thresholds.from_dict({"p99": 1})


# ---- windows of scrapes ----


def test_window_is_the_growth_between_scrapes_and_a_restart_is_seen():
    server = FakeServer()
    server.serve(2, 100, failures=50)
    before = server.scrape()
    server.serve(2, 20)
    assert window_of(grown(server.scrape(), before)).requests == 20
    assert window_of(grown(server.scrape(), before)).failures == 0
    assert not was_reset(server.scrape(), before)
    assert was_reset(FakeServer().scrape() | {next(iter(before)): 1.0}, before)


def window_of(samples: Samples) -> VersionWindow:
    return VersionWindow.of(samples, 2)


def test_parse_metrics_reads_what_triton_prints():
    text = 'tritonrag_router_requests_total{mode="shadow",model="generator",version="2"} 3\n'
    assert window_of(parse_metrics(text)).requests == 3
    # Triton's own counters have no _total suffix; prometheus_client 0.26's parser adds one.
    triton = '# TYPE nv_inference_request_success counter\nnv_inference_request_success{model="g",version="2"} 4\n'
    assert total(parse_metrics(triton), "nv_inference_request_success", version="2") == 4


# ---- steps and decisions ----


def test_parse_steps():
    assert parse_steps("shadow,5,25,50,100") == DEFAULT_STEPS
    assert parse_steps("shadow:0.5, 10%") == (Step("shadow 0.5", 0.0, 0.5), Step("10%", 0.1))
    for bad in ("", "5,200", "fast"):
        with pytest.raises(ValueError):
            parse_steps(bad)


PLAN = RolloutPlan(window_s=10, min_requests=20, interval_s=1, thresholds=LIMITS)


def guards(state: str):
    server = FakeServer()
    server.serve(1, 100)
    server.serve(2, 40, failures=0 if state != TRIP else 40)
    if state == WAIT:
        return [dataclasses.replace(g, state=WAIT) for g in evaluate(window(server, 2), window(server, 1), LIMITS)]
    return evaluate(window(server, 2), window(server, 1), LIMITS)


def test_decide_holds_until_the_window_is_complete_then_advances_and_promotes():
    config, state = start(RoutingConfig(1, 2), 2, PLAN, now=0.0)
    assert config == RoutingConfig(1, 2, 0.0, 1.0) and state.current.is_shadow
    assert decide(state, guards(PASS), 5, 40, 5).action == HOLD  # 5 of 10 s
    assert "12/20 canary requests" in decide(state, guards(PASS), 11, 12, 11).reason
    assert decide(state, guards(WAIT), 11, 40, 11).action == HOLD
    for step in DEFAULT_STEPS[1:]:
        decision = decide(state, guards(PASS), 11, 40, 11)
        assert decision.action == ADVANCE
        config, state = apply(config, state, decision)
        assert state.current == step and config.canary_weight == step.canary_weight and config.shadow_weight == 0
    decision = decide(state, guards(PASS), 11, 40, 11)
    assert decision.action == PROMOTE
    config, state = apply(config, state, decision)
    assert config == RoutingConfig(stable_version=2) and state.status == PROMOTED
    assert [d.action for d in state.history] == [ADVANCE] * 4 + [PROMOTE]


def test_a_tripped_guard_rolls_back_at_once_and_says_why():
    config, state = start(RoutingConfig(1, 2), 2, PLAN, now=0.0)
    config, state = apply(config, state, decide(state, guards(PASS), 11, 40, 11))  # at 5%
    decision = decide(state, guards(TRIP), 0.5, 40, 12)  # half a second into the window
    assert decision.action == ROLLBACK and decision.tripped == ["error_rate"]
    assert "error_rate trip: canary 40/40 = 1.000, limit 0.020" in decision.reason
    config, state = apply(config, state, decision)
    assert config == RoutingConfig(1, 2, 0.0, 0.0) and state.status == ROLLED_BACK
    assert RolloutState.from_dict(state.to_dict()) == state


# ---- the driver over a real file ----


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def driver(path: Path, server: FakeServer, clock: Clock, holder: str = "cli@test") -> RolloutDriver:
    return RolloutDriver(path, server.scrape, holder, log=lambda line: None, clock=clock)


def test_driver_promotes_through_every_step(tmp_path):
    path, server, clock = tmp_path / "canary.json", FakeServer(), Clock()
    write_config(path, RoutingConfig(1, 2))
    begin(path, read_config(path), 2, PLAN, holder="cli@test")
    run = driver(path, server, clock)
    seen = []
    for _ in range(5):
        assert run.tick() is None  # the window of this step starts
        server.serve(1, 60)
        server.serve(2, 30, mode="shadow" if read_state(path)[1].current.is_shadow else "random")
        server.compare(2, 30, 30, 900, 900)
        clock.now += 11
        seen.append(run.tick().action)
    assert seen == [ADVANCE] * 4 + [PROMOTE]
    config, state = read_state(path)
    assert config == RoutingConfig(stable_version=2) and state.status == PROMOTED
    assert state.history[-1].guards and all(g.state == PASS for g in state.history[-1].guards)


def test_driver_rolls_back_within_the_window_and_records_the_numbers(tmp_path):
    path, server, clock = tmp_path / "canary.json", FakeServer(), Clock()
    begin(path, RoutingConfig(1, 2), 2, PLAN, holder="cli@test")
    run = driver(path, server, clock)
    run.tick()
    server.serve(1, 50)
    server.serve(2, 15, failures=15, mode="shadow")
    clock.now += 1
    decision = run.tick()
    assert decision.action == ROLLBACK and decision.tripped == ["error_rate"]
    config, state = read_state(path)
    assert config == RoutingConfig(1, 2, 0.0, 0.0) and state.status == ROLLED_BACK
    assert state.last_decision.reason.startswith("error_rate trip: canary 15/15 = 1.000")
    assert run.tick() is None, "a finished rollout is not driven"


def test_one_driver_at_a_time_and_a_lapsed_lease_is_taken_over(tmp_path):
    path, server, clock = tmp_path / "canary.json", FakeServer(), Clock()
    begin(path, RoutingConfig(1, 2), 2, PLAN, holder="router@a")
    a, b = driver(path, server, clock, "router@a"), driver(path, server, clock, "router@b")
    a.tick()
    assert b.tick() is None and read_state(path)[1].lease["holder"] == "router@a"
    clock.now += PLAN.lease_s + 1  # a's replica went away
    assert b.tick() is None  # b takes over with a fresh window
    assert read_state(path)[1].lease["holder"] == "router@b"
    server.serve(1, 50)
    server.serve(2, 15, failures=15, mode="shadow")
    clock.now += 1
    assert b.tick().action == ROLLBACK


def test_a_counter_reset_restarts_the_window(tmp_path):
    path, server, clock = tmp_path / "canary.json", FakeServer(), Clock()
    begin(path, RoutingConfig(1, 2), 2, PLAN, holder="cli@test")
    server.serve(2, 100, failures=100, mode="shadow")  # before the window: never judged
    run = driver(path, server, clock)
    run.tick()
    restarted = FakeServer()  # the server restarted: counters from zero
    restarted.serve(1, 50)
    run.scrape = restarted.scrape
    clock.now += 11
    assert run.tick() is None and read_state(path)[1].status == "running"


def test_concurrent_drivers_never_lose_a_decision(tmp_path):
    """Eight drivers ticking at once on one file: the lock makes each read-decide-write whole."""
    path, server, clock = tmp_path / "canary.json", FakeServer(), Clock()
    begin(path, RoutingConfig(1, 2), 2, dataclasses.replace(PLAN, window_s=0, min_requests=0), holder=None)
    drivers = [driver(path, server, clock, f"router@{i}") for i in range(8)]
    for _ in range(12):
        server.serve(1, 20)
        server.serve(2, 20, mode="shadow")
        server.compare(2, 20, 20, 100, 100)
        threads = [threading.Thread(target=d.tick) for d in drivers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    state = read_state(path)[1]
    assert state.status == PROMOTED and [d.action for d in state.history] == [ADVANCE] * 4 + [PROMOTE]
    assert {d.driver for d in state.history} == {state.history[0].driver}, "one lease holder took every decision"


def test_a_manual_change_cancels_a_running_rollout(tmp_path):
    path = tmp_path / "canary.json"
    begin(path, RoutingConfig(1, 2), 2, PLAN, holder=None)
    stop_by_hand(path, RoutingConfig(1, 2, 0.3), "canary set --canary-weight 0.3")
    config, state = read_state(path)
    assert config == RoutingConfig(1, 2, 0.3) and state.status == CANCELLED
    assert state.last_decision.reason == "canary set --canary-weight 0.3"


# ---- shadow agreement ----


def test_shadow_pair_compares_once_when_both_finished_well():
    seen: list[Agreement] = []
    pair = ShadowPair(seen.append)
    pair.shadow_done("Paris.")
    assert not seen
    pair.primary_done("Paris.")
    assert seen == [Agreement(True, 6, 6)]
    failed = ShadowPair(seen.append)
    failed.primary_done(None)
    failed.shadow_done("Paris.")
    assert len(seen) == 1
    assert compare("abc", "abcd") == Agreement(False, 3, 4)


@pytest.mark.parametrize(
    "raw, greedy",
    [(None, True), (b"", True), (b'{"temperature": 0}', True), (b'{"temperature": 0.7}', False), (b"{bad", False)],
)
def test_only_greedy_requests_are_compared(raw, greedy):
    assert is_greedy(raw) is greedy


# ---- the weights file: path from the environment, a ConfigMap's symlink swap ----


def test_weights_file_path_from_environment_or_parameter(tmp_path, monkeypatch):
    monkeypatch.delenv(canary.CANARY_FILE_ENV, raising=False)
    monkeypatch.setenv("TRITONRAG_ARTIFACTS", str(tmp_path / "art"))
    assert canary_file_path("${TRITONRAG_ARTIFACTS}/canary.json", tmp_path / "repo") == tmp_path / "art/canary.json"
    monkeypatch.setenv(canary.CANARY_FILE_ENV, str(tmp_path / "etc/canary/canary.json"))
    assert canary_file_path("${TRITONRAG_ARTIFACTS}/canary.json", tmp_path) == tmp_path / "etc/canary/canary.json"


def configmap_update(mount: Path, config: RoutingConfig, stamp: str) -> None:
    """What the kubelet does to a mounted ConfigMap: a new timestamped folder, `..data` swapped to it
    by an atomic rename, the old folder deleted. `canary.json` is a link through `..data`."""
    folder = mount / f"..{stamp}"
    folder.mkdir()
    write_config(folder / "canary.json", config)
    (mount / "..data_tmp").symlink_to(folder.name)
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "canary.json").is_symlink():
        (mount / "canary.json").symlink_to("..data/canary.json")
    if old:
        for child in (mount / old).iterdir():
            child.unlink()
        (mount / old).rmdir()


def test_the_router_follows_a_configmap_through_the_kubelets_symlink_swap(tmp_path, monkeypatch):
    mount = tmp_path / "etc-canary"
    mount.mkdir()
    configmap_update(mount, RoutingConfig(1, 2, 0.1), "2026_01_01_00_00_00.1")
    monkeypatch.setenv(canary.CANARY_FILE_ENV, str(mount / "canary.json"))
    path = canary_file_path("${TRITONRAG_ARTIFACTS}/canary.json", tmp_path)
    assert path == mount / "canary.json", "the path is kept as given, links not resolved"
    weights = WeightsFile(path, RoutingConfig())
    assert weights.current() == RoutingConfig(1, 2, 0.1)
    for i, weight in enumerate((0.3, 0.0, 0.5)):
        configmap_update(mount, RoutingConfig(1, 2, weight), f"2026_01_01_00_0{i + 1}_00.{i}")
        assert weights.current() == RoutingConfig(1, 2, weight) and weights.error is None
    assert len([p for p in mount.iterdir() if p.name.startswith("..2026")]) == 1, "old folders are gone"


# ---- what the CLI shows ----


def test_status_view_shows_step_guards_and_last_decision(tmp_path):
    path, server, clock = tmp_path / "canary.json", FakeServer(), Clock()
    begin(path, RoutingConfig(1, 2), 2, PLAN, holder="cli@test")
    run = driver(path, server, clock)
    run.tick()
    server.serve(1, 50)
    server.serve(2, 15, failures=15, mode="shadow")
    clock.now += 1
    run.tick()
    text = render_rollout(read_state(path)[1], now=clock.now)
    assert text.startswith("rollout of version 2 over 1: rolled_back, step 1/5 (shadow)")
    words = " ".join(text.split())
    assert "guard state value limit detail error_rate trip 1 0.02 canary 15/15 = 1.000, limit 0.020" in words
    assert "ttft_p95 wait - - waiting: 0/10 canary samples" in words
    assert "last decision: (0 s ago" in text and "rollback at step shadow: error_rate trip" in text
