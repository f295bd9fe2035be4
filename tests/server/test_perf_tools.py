"""Triton's standard load tools against the public LLM through a real tritonserver: genai-perf and perf_analyzer.

Both run unchanged, as a user runs them (from `.venv-perf`, which `make perf-tools` builds and
`make test` depends on), for a few seconds of load. The server's own counters confirm that
every request succeeded and generated exactly the tokens asked for.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import requests

import polling
from tritonrag import metrics
from tritonrag.defaults import GENERATOR_MODEL, LLM_MODEL
from tritonrag.paths import REPO_ROOT, generator_weights_dir
from tritonrag_bench.perf_tools import GenaiPerfRun, missing_tools, perf_analyzer
from tritonrag_clients.prom import parse_metrics, total

SUCCESS, FAILURE = metrics.TRITON_SUCCESS + "_total", metrics.TRITON_FAILURE + "_total"  # prometheus_client's names


@pytest.fixture(scope="module")
def perf_tools():
    """The tools, built by `make perf-tools` when they are not there yet (CI builds them before the suite)."""
    if missing_tools():
        subprocess.run(["make", "perf-tools"], cwd=REPO_ROOT, capture_output=True, timeout=1800, check=False)
    reason = missing_tools()
    if reason:
        pytest.skip(f"genai-perf/perf_analyzer cannot be installed here: {reason}")


def counters(server) -> dict[str, float]:
    samples = parse_metrics(requests.get(server.metrics_url, timeout=10).text)
    return {
        "success": total(samples, SUCCESS, model=LLM_MODEL),
        "failure": total(samples, FAILURE, model=LLM_MODEL),
        "tokens": total(samples, metrics.VLLM_GENERATION_TOKENS.name, model=GENERATOR_MODEL),
    }


def settled(server, expected: dict[str, float], before: dict[str, float], timeout: float = 30.0) -> dict[str, float]:
    """The counters' growth once it reaches `expected` (Triton counts a decoupled request a moment after it ends)."""
    deadline = time.monotonic() + timeout
    while True:
        grown = {key: value - before[key] for key, value in counters(server).items()}
        if grown == expected or time.monotonic() > deadline:
            return grown
        time.sleep(0.3)


def test_genai_perf_profile(server, perf_tools, tmp_path):
    """genai-perf, streaming, synthetic prompts: every request succeeds with exactly the asked output length."""
    run = GenaiPerfRun(
        url=server.grpc_url,
        model=LLM_MODEL,
        tokenizer=generator_weights_dir(),
        concurrency=2,
        input_tokens=32,
        output_tokens=8,
        request_count=6,
        artifact_dir=tmp_path / "genai-perf",
        extra_inputs=("return_num_output_tokens:true",),  # each response says how many tokens it carries
    )
    before = polling.settled(lambda: counters(server))  # an earlier test's tokens may still be on their way
    export = run.run(echo=False, timeout=900)
    sent = run.request_count + run.concurrency  # the warm-up requests count on the server too
    assert settled(server, {"success": sent, "failure": 0, "tokens": sent * 8}, before) == {
        "success": sent,
        "failure": 0,
        "tokens": sent * 8,
    }
    assert export["request_count"]["avg"] == run.request_count
    profile = json.loads(next((tmp_path / "genai-perf").rglob("profile_export.json")).read_text())
    measured = profile["experiments"][0]["requests"]
    assert len(measured) == run.request_count
    for request in measured:  # the tokens each request got, as its responses report them
        assert sum(r.get("num_output_tokens", 0) for r in request["response_outputs"]) == 8
    # genai-perf counts by re-tokenizing the text, which can merge two generated tokens ("\n" "\n" -> "\n\n").
    lengths = export["output_sequence_length"]
    assert 7 <= lengths["min"] <= lengths["max"] <= 8 and lengths["avg"] >= 7.5, lengths
    assert export["input_sequence_length"]["avg"] == 32
    assert export["time_to_first_token"]["avg"] > 0 and export["inter_token_latency"]["avg"] > 0
    inputs = json.loads(next((tmp_path / "genai-perf").rglob("inputs.json")).read_text())
    assert inputs["data"][0]["exclude_input_in_output"] == [True]  # vllm_backend's payload, as genai-perf sends it


def test_perf_analyzer_with_request_parameters(server, perf_tools, tmp_path):
    """perf_analyzer, gRPC streaming, sampling keys as request parameters: zero errors, the tokens asked for."""
    data = {"data": [{"text_input": ["The capital of France is"]}, {"text_input": ["Name three colours:"]}]}
    (tmp_path / "input.json").write_text(json.dumps(data))
    args = ["-m", LLM_MODEL, "-i", "grpc", "--streaming", "--async", "-u", server.grpc_url]
    args += ["--concurrency-range", "2", "--request-count", "6", "--warmup-request-count", "2"]
    args += ["--stability-percentage", "999", "--input-data", str(tmp_path / "input.json")]
    args += ["--request-parameter", "max_tokens:4:int", "--request-parameter", "ignore_eos:true:bool"]
    before = polling.settled(lambda: counters(server))  # an earlier test's tokens may still be on their way
    output, export = perf_analyzer(args, tmp_path / "export.json", timeout=600)
    # The client's count: the server section's "Successful request count" is a window on Triton's own
    # statistics, where a request of the test before can still finish (7 seen in a clean-clone run).
    assert re.search(r"Client: \s+Request count: 6\b", output), output
    assert settled(server, {"success": 8, "failure": 0, "tokens": 32}, before) == {
        "success": 8,
        "failure": 0,
        "tokens": 32,
    }
    measured = export["experiments"][0]["requests"]
    assert len(measured) == 6
    for request in measured:
        text = "".join(r.get("text_output", "") for r in request["response_outputs"])
        assert text.startswith(request["request_inputs"]["text_input"]), text  # not streamed: the prompt, then 4 tokens
