"""A short soak (`make soak`'s code, tritonrag_bench.soak) through a tritonserver of its own: mixed traffic
through `rag` and `llm` over gRPC and HTTP, cancels, disconnects, bad inputs, two bursts past the router's
max_streams, a canary flip and back, one SIGKILL of generator version 1's stub, then the move to version 2.

Every call carries a 30 s Triton timeout; the `llm` router bounds its generator stream by that plus 30 s.
Asserted: the server stays up; no call hangs (the soak's own 120 s deadline), those in flight in the
killed stub included: the `llm` router sees the stub gone (tritonrag.triton.stubs) and ends them
UNAVAILABLE, and routes new requests around the dead version. Every error is the code its scenario
expects (an INVALID_ARG names its field); the engine drains to no running, waiting or KV block held; the
server and models are ready and answer. Not asserted: that the killed version serves again; on
tritonserver 2.51 it does not (the Python backend restarts a dead stub only for non-decoupled models).
No timings are asserted.

TRITONRAG_SOAK_MINUTES sets the traffic time (default 1.5).
"""

from __future__ import annotations

import os

import pytest

from tritonrag.paths import artifacts_dir, generator_weights_dir, index_dir
from tritonrag_bench.soak import cli, server
from tritonrag_bench.soak.outcomes import HUNG, INVALID_ARG, OK, UNAVAILABLE
from tritonrag_bench.soak.runner import Settings

MINUTES = float(os.environ.get("TRITONRAG_SOAK_MINUTES", "1.5"))


@pytest.fixture(scope="module")
def result() -> dict:
    missing = [
        p for p in (generator_weights_dir() / "model.safetensors", index_dir() / "faiss.index") if not p.exists()
    ]
    if missing:
        pytest.skip(f"artifacts missing ({', '.join(map(str, missing))}): run `make setup` first")
    out = artifacts_dir() / "soak" / "test"
    own, endpoints = server.start_own(out)
    try:
        settings = Settings(minutes=MINUTES, concurrency=6, burst=96, timeout_s=30.0, deadline_s=120.0, drain_s=120.0)
        return cli.run(settings, endpoints, out, {"server": "own tritonserver 2.51 (tests/server/test_soak.py)"})
    finally:
        own.stop()


def check(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


def test_the_server_stays_up_and_answers(result):
    assert result["server_log_tail"] is None, result["server_log_tail"]
    for name in ("server up", "server and models ready", "plain llm and rag answered"):
        assert check(result, name)["passed"], check(result, name)


def test_no_call_hangs_not_even_in_the_killed_stub(result):
    for name in ("no hung call (outside the kill)", "calls in flight at the kill ended"):
        assert check(result, name)["passed"], check(result, name)
    assert result["codes"].get(HUNG, 0) == 0, result["unexpected"]


def test_every_error_is_typed(result):
    assert check(result, "every error typed")["passed"], (check(result, "every error typed"), result["unexpected"])
    codes = result["codes"]
    assert codes.get(OK, 0) > 0 and codes.get(INVALID_ARG, 0) > 0, codes


def test_bursts_past_max_streams_are_shed_with_unavailable(result):
    burst = result["by_scenario"]["burst_llm"]
    assert burst.get(UNAVAILABLE, 0) > 0 and burst.get(OK, 0) > 0, burst


def test_the_engine_drains(result):
    drained = check(result, "engine drained (running 0, waiting 0, KV blocks in use 0)")
    assert drained["passed"], drained


def test_the_canary_flip_and_the_failover_move_traffic(result):
    served = result["served_version_by_phase"]
    assert served["canary 50%"].get("2", 0) > 0 and served["canary 50%"].get("1", 0) > 0, served
    assert set(served.get("failover: canary promoted", {})) <= {"2"}, served
    # Between the kill and the promote the router already sends unpinned traffic to version 2.
    assert set(served.get("generator v1 stub killed", {})) <= {"2"}, served


def test_the_stub_kill_happened_and_is_reported(result):
    kill = result["kill"]
    assert kill is not None and "SIGKILL" in kill["detail"], kill
    assert check(result, "generator v1 serves again after its stub was killed")["gating"] is False
