"""Per-request deadlines through a real tritonserver: a generation past its deadline ends with a typed
error and the engine frees its KV blocks.

The server runs a copy of the model repository whose only change is the generator's
`request_timeout_s`, cut from 300 s to REQUEST_TIMEOUT_S so that a `rag` request reaches it. Every
request here asks for thousands of tokens (ignore_eos), far more than any machine generates inside
these deadlines, so each test asserts how the request ended and what was freed, never a duration.
Why it matters: tritonserver 2.51's ensemble does not pass a `rag` client's cancel to its in-flight
`llm` step, so without a deadline a cancelled `rag` stream generates on to max_tokens.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import shutil
import signal

import pytest
import requests
import tritonclient.grpc as grpcclient

from polling import wait_for
from tritonrag import metrics
from tritonrag.defaults import ENSEMBLE_MODEL, LLM_MODEL
from tritonrag.errors import Unavailable, error_from_message
from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir, generator_weights_dir, index_dir
from tritonrag.triton.prom import parse_metrics, total
from tritonrag.triton.server import TritonServer
from tritonrag_bench.soak.chaos import stub_pid
from tritonrag_clients.streaming import bool_input, bytes_input, rag_inputs

REQUEST_TIMEOUT_S = 4  # the copy's generator default
CLIENT_TIMEOUT_US = 1_500_000  # shorter than the default: the client's own deadline applies
LONG = {"max_tokens": 2500, "temperature": 0, "ignore_eos": True}
REQUEST_TIMEOUT = re.compile(r'(key: "request_timeout_s" value: \{ string_value: ")([^"]+)')
STREAM_BOUND_S = 12  # the copy's llm router bound on a generator stream (330 s in the real config)
STREAM_BOUND = re.compile(r'(key: "stream_bound_s" value: \{ string_value: ")([^"]+)')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """This module's own server (not the shared one): the generator's default deadline cut short."""
    missing = [
        p for p in (generator_weights_dir() / "model.safetensors", index_dir() / "faiss.index") if not p.exists()
    ]
    if missing:
        pytest.skip(f"artifacts missing ({', '.join(map(str, missing))}): run `make setup` first")
    repository = tmp_path_factory.mktemp("deadlines") / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, repository, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    config = repository / "generator" / "config.pbtxt"
    text, count = REQUEST_TIMEOUT.subn(rf"\g<1>{REQUEST_TIMEOUT_S}", config.read_text())
    assert count == 1, f"{config}: no request_timeout_s parameter to cut"
    config.write_text(text)
    router = repository / "llm" / "config.pbtxt"
    text, count = STREAM_BOUND.subn(rf"\g<1>{STREAM_BOUND_S}", router.read_text())
    assert count == 1, f"{router}: no stream_bound_s parameter to cut"
    router.write_text(text)
    instance = TritonServer.on_free_ports(
        model_repository=repository, log_path=artifacts_dir() / "logs" / "test-deadlines-triton.log"
    )
    with instance:
        yield instance


def _samples(server):
    return parse_metrics(requests.get(server.metrics_url, timeout=10).text)


def _engine_gauges(server) -> tuple[float, float]:
    samples = _samples(server)
    return total(samples, metrics.RUNNING.name), total(samples, metrics.KV_USAGE.name)


def _counts(server) -> tuple[float, float]:
    """(timeouts, aborts) the engine counted, every generator version together."""
    samples = _samples(server)
    aborts = total(samples, metrics.REQUEST_SUCCESS.name, finished_reason="abort")
    return total(samples, metrics.REQUEST_TIMEOUTS.name), aborts


_wait_for = functools.partial(wait_for, timeout=120.0)  # this module's longer default


def _stream(server, model: str, inputs: list, timeout_us: int | None = None) -> str | None:
    """Run one gRPC stream to its end: the error message it ended with, or None."""
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result=None, error=None: got.put((result, error)))
        client.async_stream_infer(model, inputs, timeout=timeout_us, enable_empty_final_response=True)
        while True:
            result, error = got.get(timeout=600)
            if error is not None:
                return error.message()
            if result.get_response().parameters["triton_final_response"].bool_param:
                return None
    finally:
        client.stop_stream()
        client.close()


def _llm_inputs(prompt: str) -> list:
    return [
        bytes_input("text_input", prompt),
        bool_input("stream", True),
        bytes_input("sampling_parameters", json.dumps(LONG)),
    ]


def _assert_deadline(message: str | None, whose: str) -> None:
    assert message is not None, "the stream ended without an error"
    assert "deadline exceeded" in message and whose in message, message
    assert isinstance(error_from_message(message), Unavailable), message  # UNAVAILABLE, as the router reads it


def _assert_freed(server, timeouts_before: float) -> None:
    assert _wait_for(lambda: _counts(server)[0] > timeouts_before), "the engine counted no timeout"
    assert _wait_for(lambda: _engine_gauges(server) == (0, 0)), f"running, KV usage: {_engine_gauges(server)}"


def test_an_llm_request_ends_at_its_client_timeout(server):
    """gRPC `timeout` on `llm`: the router passes it on with the generator request, whose engine ends the
    generation at the client's deadline (shorter than the server's) and frees its blocks."""
    timeouts_before = _counts(server)[0]
    message = _stream(server, LLM_MODEL, _llm_inputs("Tell me a very long story."), CLIENT_TIMEOUT_US)
    _assert_deadline(message, "set by the client")
    assert "ran 1.5 s" in message
    _assert_freed(server, timeouts_before)


def test_http_generate_passes_its_timeout_parameter(server):
    """Triton 2.51's HTTP generate hands `parameters.timeout` to the model as a request parameter; `llm`
    reads it as the client's timeout (microseconds), as gRPC's."""
    timeouts_before = _counts(server)[0]
    body = {"text_input": "Count to ten thousand.", "stream": True, "parameters": {**LONG, "timeout": 1_500_000}}
    response = requests.post(f"http://{server.http_url}/v2/models/{LLM_MODEL}/generate_stream", json=body, timeout=600)
    _assert_deadline(response.text, "set by the client")
    _assert_freed(server, timeouts_before)


def test_a_rag_request_ends_at_the_server_default(server):
    """No client timeout: the generator's request_timeout_s ends the `rag` stream with a typed error."""
    timeouts_before = _counts(server)[0]
    message = _stream(server, ENSEMBLE_MODEL, rag_inputs("How do I read a file line by line?", 2, LONG))
    _assert_deadline(message, "request_timeout_s")
    assert f"ran {REQUEST_TIMEOUT_S} s" in message
    _assert_freed(server, timeouts_before)


def test_a_cancelled_rag_stream_is_bounded_by_the_deadline(server):
    """A client cancels its `rag` stream after the first tokens. Triton 2.51's ensemble does not pass that
    cancel to the `llm` step, so nothing but the deadline stops the generation: the engine counts it ended
    (a timeout here; an abort on a Triton that passes the cancel) and frees its blocks, not at 2,500 tokens."""
    before = _counts(server)
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result=None, error=None: got.put(error or result))
        inputs = rag_inputs("What does functools.lru_cache do?", 2, LONG)
        client.async_stream_infer(ENSEMBLE_MODEL, inputs, enable_empty_final_response=True)
        first = got.get(timeout=600)
        assert not isinstance(first, Exception), first
        client.stop_stream(cancel_requests=True)
    finally:
        client.close()
    assert _wait_for(lambda: sum(_counts(server)) > sum(before)), "the generation was neither timed out nor aborted"
    assert _wait_for(lambda: _engine_gauges(server) == (0, 0)), f"running, KV usage: {_engine_gauges(server)}"


def test_a_frozen_generator_stub_cannot_hang_an_llm_stream(server):
    """The generator's stub stopped (SIGSTOP) mid-stream: its own deadline cannot fire, nothing answers;
    the `llm` router's bound on its generator stream (stream_bound_s, cut to 12 s here) ends the caller's
    stream with UNAVAILABLE. After SIGCONT the generator serves again."""
    server_pid = server.process.pid
    stub = stub_pid(server_pid, 1)
    assert stub is not None, "no stub process for generator version 1"
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result=None, error=None: got.put(error or result))
        inputs = [
            bytes_input("text_input", "Tell me a very long story."),
            bool_input("stream", True),
            bytes_input("sampling_parameters", json.dumps(LONG)),
        ]
        client.async_stream_infer(LLM_MODEL, inputs, model_version="", enable_empty_final_response=True)
        first = got.get(timeout=300)
        assert not isinstance(first, Exception), first
        os.kill(stub, signal.SIGSTOP)
        try:
            error = None
            while error is None:  # tokens already sent drain first; then nothing comes until the bound
                item = got.get(timeout=STREAM_BOUND_S + 120)
                if isinstance(item, Exception):
                    error = item
        finally:
            os.kill(stub, signal.SIGCONT)
        assert isinstance(error_from_message(error.message()), Unavailable), error.message()
        assert "deadline exceeded" in error.message(), error.message()
    finally:
        client.close()
    assert _wait_for(lambda: _engine_gauges(server) == (0, 0)), f"running, KV usage: {_engine_gauges(server)}"
    short = [
        bytes_input("text_input", "Say hello."),
        bool_input("stream", True),
        bytes_input("sampling_parameters", json.dumps({"max_tokens": 4})),
    ]
    assert _stream(server, LLM_MODEL, short) is None, "the generator did not serve again after SIGCONT"
