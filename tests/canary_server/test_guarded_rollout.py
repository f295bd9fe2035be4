"""Guarded rollouts through a real tritonserver: a healthy canary is promoted, broken ones are rolled back.

The server holds `llm` and four generator versions, without the retrieval pipeline (the
prompts are RAG-length all the same: the prompt builder over corpus passages):

    1  the stable version (torch)
    2  the configured canary: the same weights on ONNX Runtime                      -> healthy
    3  a context length too small for RAG prompts (max_model_len 256): every
       request is refused                                                           -> errors
    4  no prefix cache, 8-token steps, one sequence at a time: the first token
       comes seconds late                                                           -> slow

Steps are held seconds, not minutes, and guards judge from eight requests a side, so each
rollout fits in a test. Each test first sends every prompt to the versions it involves, so
prefix caches are warm on both sides (a cold canary's first prefills are slow, a first
run showed an ITL p95 23x the stable's from one request). The latency ratio allowed to the
healthy canary is 5: the 2-core machine is shared with other processes (load averages of
10-20 while these ran), and ONNX Runtime decodes slower than torch at batch > 1. The slow
canary's first token comes tens of times later than the stable's.
"""

from __future__ import annotations

import shutil

import pytest
from canary_helpers import (
    Load,
    metric,
    rag_prompts,
    router_inputs,
    running,
    set_split,
    skip_without_artifacts,
    start_server,
    versions_of,
)

from polling import wait_for
from tritonrag import metrics
from tritonrag.triton.canary import RoutingConfig, write_config
from tritonrag.triton.guards import PASS
from tritonrag.triton.rollout import ADVANCE, PROMOTE, PROMOTED, ROLLBACK, ROLLED_BACK
from tritonrag.triton.rollout_driver import read_state
from tritonrag_clients import canary as canary_cli

GEN = {"model": "generator"}
SMALL_KV = str(64 * 2**20)
VERSIONS = {
    1: {},
    2: {},
    3: {"max_model_len": "256", "kv_cache_memory_bytes": SMALL_KV},
    4: {
        "enable_prefix_caching": "false",
        "max_num_batched_tokens": "8",
        "max_num_seqs": "1",
        "kv_cache_memory_bytes": SMALL_KV,
    },
}
GREEDY = {"max_tokens": 6, "temperature": 0}
QUICK = ["--window", "4", "--interval", "0.5", "--min-samples", "8"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights_file):
    skip_without_artifacts()
    write_config(weights_file, RoutingConfig(1, 2))
    root = tmp_path_factory.mktemp("repo")
    with running(start_server(root, weights_file, "canary-rollout.log", versions=VERSIONS, pipeline=False)) as (
        instance,
    ):
        yield instance
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return rag_prompts(3, passages=3)


def cli(server, weights_file, *args: str) -> int:
    common = ["--file", str(weights_file), "--http-url", server.http_url, "--metrics-url", server.metrics_url]
    return canary_cli.main([*common, *args])


def ttft_count(server, version: str) -> float:
    return metric(server, f"{metrics.TTFT.name}_count", version=version, **GEN)


def warm(server, streams, prompts: list[str], *versions: str) -> None:
    """Each prompt once on each version (pinned): prefix caches hold them before a window opens.

    Then waits until /metrics holds the warm-up's first-token times: the engine's histograms reach it
    through its metric outbox, a flush later (longer on a loaded machine), and a cold prefill's TTFT
    landing inside the first rollout window tripped the latency guard on CI (canary 6.4 s, 9 TTFTs
    for 8 finished requests)."""
    before = {v: ttft_count(server, v) for v in versions}
    results = streams.wait([streams.send(router_inputs(p, GREEDY, pin=v)) for v in versions for p in prompts], 600)
    assert all(r.error is None for r in results), [r.error for r in results]
    assert wait_for(lambda: all(ttft_count(server, v) >= before[v] + len(prompts) for v in versions), timeout=60)


def traffic(server, version: str) -> float:
    """Everything a version has received: routed by the router (any mode) and finished by Triton."""
    labels = {"version": version, **GEN}
    return sum(
        metric(server, name, **labels)
        for name in ("tritonrag_router_requests_total", "nv_inference_request_success", "nv_inference_request_failure")
    )


def test_a_healthy_canary_is_promoted_with_no_manual_step(server, streams, weights_file, prompts, capsys):
    """shadow -> 5% -> 25% -> 50% -> 100% -> promoted, driven by `canary rollout` from /metrics, under load."""
    warm(server, streams, prompts, "1", "2")
    with Load(server.grpc_url, prompts, GREEDY) as load:
        # ONNX Runtime and torch sum in different orders: on a RAG-length prompt a near-tie can flip one
        # greedy token (8 of 9 mirrors identical in one clean run), so with ~9 samples the bar is 0.75.
        code = cli(server, weights_file, "rollout", "--canary-version", "2", "--min-requests", "8", *QUICK,
                   "--max-latency-ratio", "5", "--min-exact-match", "0.75", "--timeout", "900")  # fmt: skip
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    assert not load.errors()
    config, state = read_state(weights_file)
    assert config == RoutingConfig(stable_version=2) and state.status == PROMOTED
    assert [d.action for d in state.history] == [ADVANCE] * 4 + [PROMOTE]
    assert [d.step_name for d in state.history] == ["shadow", "5%", "25%", "50%", "100%"]
    for decision in state.history:
        assert decision.guards and all(g.state == PASS for g in decision.guards), decision
    shadow = {g.name: g for g in state.history[0].guards}
    assert {"shadow_exact_match", "shadow_length_ratio"} <= set(shadow), "agreement judged in the shadow step"
    print(f"shadow agreement (greedy, RAG prompts): {shadow['shadow_exact_match'].detail}")
    assert "promote at step 100%" in out and "advance at step shadow" in out
    assert wait_for(lambda: metric(server, metrics.ROLLOUT_DECISION.name, action="promote") > 0)
    assert metric(server, metrics.ROLLOUT_STEP.name) == -1
    after = [streams.send(router_inputs(prompts[0], GREEDY, key=f"after-{i}")) for i in range(10)]
    assert set(versions_of(streams.wait(after))) == {2}


def test_a_canary_that_fails_is_rolled_back_by_the_routers_within_one_window(
    server, streams, weights_file, prompts, capsys
):
    """Version 3 refuses every RAG prompt. The routers drive (`--detach`): the error-rate guard trips in the
    shadow step, on mirrored requests, so no user ever got an answer from it; afterwards it gets nothing."""
    set_split(weights_file, canary_version=3)
    warm(server, streams, prompts, "1")
    window = 120.0
    with Load(server.grpc_url, prompts, GREEDY) as load:
        assert cli(server, weights_file, "rollout", "--canary-version", "3", "--detach", "--window", str(window),
                   "--min-requests", "1000", "--interval", "0.5", "--min-samples", "8") == 0  # fmt: skip
        assert wait_for(lambda: read_state(weights_file)[1].status != "running", timeout=window)
    assert not load.errors(), "in the shadow step users are answered by the stable version"
    config, state = read_state(weights_file)
    assert state.status == ROLLED_BACK and config == RoutingConfig(1, 3, 0.0, 0.0)
    decision = state.last_decision
    assert decision.action == ROLLBACK and decision.tripped == ["error_rate"] and decision.step_name == "shadow"
    assert decision.at - state.step_started_at < window, "rolled back within the step's window"
    assert decision.driver.startswith("router@"), "a router replica drove it"
    # Requests are counted when routed and failures when they come back: mirrors still in flight lower the rate.
    error_rate = {g.name: g for g in decision.guards}["error_rate"]
    assert error_rate.value > 0.5 and error_rate.threshold == 0.02
    assert decision.reason.startswith("error_rate trip: canary ") and ", limit 0.020 (stable 0.000)" in decision.reason
    # Recorded: a metric naming the guard, a log line with the numbers, the CLI's status.
    assert wait_for(lambda: metric(server, metrics.ROLLOUT_DECISION.name, action="rollback", guard="error_rate") > 0)
    assert wait_for(
        lambda: "llm: rollout of version 3: rollback at step shadow: error_rate trip:" in server.log_path.read_text()
    )
    assert metric(server, metrics.ROLLOUT_GUARD_OK.name, guard="error_rate") == 0
    capsys.readouterr()
    assert cli(server, weights_file, "status") == 0
    status = capsys.readouterr().out
    assert "rollout of version 3 over 1: rolled_back, step 1/5 (shadow)" in status
    assert "last decision: " in status and "rollback at step shadow: error_rate trip" in status
    assert "error_rate" in status and "limit" in status
    # Nothing reaches version 3 after the rollback.
    assert wait_for(lambda: metric(server, "nv_inference_pending_request_count", version="3", **GEN) == 0)
    before = traffic(server, "3")
    after = [streams.send(router_inputs(prompts[i % 3], GREEDY, key=f"late-{i}")) for i in range(30)]
    assert set(versions_of(streams.wait(after))) == {1}
    assert traffic(server, "3") == before


def test_a_slow_canary_is_rolled_back_on_latency(server, streams, weights_file, prompts, capsys):
    """Version 4 at a live 50% step: its first tokens come far later than the stable's; the TTFT guard trips,
    the CLI rolls it back and exits 3, and no request reaches it afterwards."""
    set_split(weights_file, canary_version=4)
    warm(server, streams, prompts, "1")
    with Load(server.grpc_url, prompts, GREEDY, concurrency=6) as load:
        code = cli(server, weights_file, "rollout", "--canary-version", "4", "--steps", "50,100",
                   "--min-requests", "1000", *QUICK, "--timeout", "600")  # fmt: skip
    out = capsys.readouterr().out
    print(out)
    assert code == 3, out
    assert not load.errors(), "slow, not failing: every user was answered"
    config, state = read_state(weights_file)
    assert state.status == ROLLED_BACK and config == RoutingConfig(1, 4, 0.0, 0.0)
    assert "ttft_p95" in state.last_decision.tripped and state.last_decision.step_name == "50%"
    ttft = {g.name: g for g in state.last_decision.guards}["ttft_p95"]
    assert ttft.value > ttft.threshold
    assert "rollback at step 50%: " in out and "ttft_p95 trip" in out
    assert wait_for(lambda: metric(server, "nv_inference_pending_request_count", version="4", **GEN) == 0, timeout=120)
    before = traffic(server, "4")
    after = [streams.send(router_inputs(prompts[i % 3], GREEDY, key=f"slow-{i}")) for i in range(30)]
    assert set(versions_of(streams.wait(after))) == {1}
    assert traffic(server, "4") == before
