"""Inference behind a key, an option (tritonrag.triton.inference_key), through a real tritonserver.

The server runs `llm` and `generator` version 1 only (a repository of the two, as in test_tls.py),
started with `TritonServer(inference_key=KEY)`. Without the key, `llm` is refused (HTTP generate 403;
a gRPC stream UNAVAILABLE, "This protocol is restricted") while health, metadata and model config stay
open. With it, `llm` streams over gRPC and answers HTTP generate: the router's own gRPC loopback to the
generator carries the key (the generator's stream would be refused otherwise). Our callers send it:
the OpenAI service's bridge (a wrong key: 502), the soak's calls (from $TRITONRAG_INFERENCE_KEY), and
the ask CLI says why it was refused when the key is missing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import requests
import tritonclient.grpc as grpcclient
from repositories import llm_repository
from tritonclient.utils import InferenceServerException

from tritonrag.defaults import LLM_MODEL
from tritonrag.openai.bridge import TritonBridge
from tritonrag.openai.errors import OpenAIError
from tritonrag.openai.triton_map import Ask
from tritonrag.paths import artifacts_dir, generator_weights_dir
from tritonrag.triton.inference_key import INFERENCE_HEADER, INFERENCE_KEY_ENV, http_headers
from tritonrag.triton.server import TritonServer, new_key
from tritonrag_bench.soak.calls import Limits, grpc_stream, http_generate, http_stream
from tritonrag_bench.soak.outcomes import OK
from tritonrag_clients.streaming import StreamingClient, collect, generator_inputs

KEY = new_key()
PROMPT = "The capital of France is"
SAMPLING = {"max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    if not (generator_weights_dir() / "model.safetensors").exists():
        pytest.skip("generator weights missing: run `make setup` first")
    repo = llm_repository(tmp_path_factory.mktemp("inference-key"))
    log = artifacts_dir() / "logs" / "inference-key-server.log"
    with TritonServer.on_free_ports(model_repository=repo, log_path=log, inference_key=KEY) as server:
        yield server


def generate_url(server, endpoint: str = "generate") -> str:
    return f"http://{server.http_url}/v2/models/{LLM_MODEL}/{endpoint}"


def test_without_the_key_inference_is_refused_and_health_stays_open(keyed_server):
    body = {"text_input": PROMPT, "parameters": SAMPLING}
    for endpoint in ("generate", "generate_stream"):
        for headers in ({}, {INFERENCE_HEADER: "wrong"}):
            refused = requests.post(generate_url(keyed_server, endpoint), json=body, headers=headers, timeout=60)
            assert refused.status_code == 403 and INFERENCE_HEADER in refused.text, (endpoint, refused.text)
    with StreamingClient(keyed_server.grpc_url, key="") as client:  # "": no key sent
        with pytest.raises(InferenceServerException, match="restricted") as refused:
            collect(client.stream(LLM_MODEL, generator_inputs(PROMPT, SAMPLING)))
    assert refused.value.status() == "StatusCode.UNAVAILABLE"  # Triton 2.51's code for it
    assert requests.get(f"http://{keyed_server.http_url}/v2/health/ready", timeout=10).status_code == 200
    client = grpcclient.InferenceServerClient(keyed_server.grpc_url)
    try:  # probes and the OpenAI service's start-up read these without the key
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(LLM_MODEL)
        assert client.get_model_config(LLM_MODEL, as_json=True)["config"]["name"] == LLM_MODEL
    finally:
        client.close()


def test_with_the_key_llm_streams_over_grpc_through_the_routers_keyed_loopback(keyed_server):
    with StreamingClient(keyed_server.grpc_url, key=KEY) as client:
        text, _, last = collect(client.stream(LLM_MODEL, generator_inputs(PROMPT, SAMPLING)))
    assert text.strip() and last.final and 0 < last.num_output_tokens <= SAMPLING["max_tokens"]


def test_with_the_key_http_generate_answers(keyed_server):
    body = {"text_input": PROMPT, "parameters": SAMPLING}
    answer = requests.post(generate_url(keyed_server), json=body, headers=http_headers(KEY), timeout=300)
    assert answer.status_code == 200, answer.text
    assert answer.json()["text_output"].strip()


def test_the_openai_bridge_sends_the_key_and_a_wrong_one_is_a_502(keyed_server):
    async def generate(key: str) -> str:
        bridge = TritonBridge(keyed_server.grpc_url, key=key)
        try:
            await bridge.connect((LLM_MODEL,), timeout=60)  # health and model config: open
            pieces = bridge.generate(bridge.models[LLM_MODEL], Ask(PROMPT, dict(SAMPLING)))
            return "".join([piece.text async for piece in pieces])
        finally:
            await bridge.close()

    assert asyncio.run(generate(KEY)).strip()
    with pytest.raises(OpenAIError) as refused:
        asyncio.run(generate("wrong"))
    # Triton 2.51 closes a refused stream with its reason ("This protocol is restricted, ...") or, in a
    # clean-clone run, with a bare "Internal error from Core": either way a 502, the service's setup.
    message = str(refused.value)
    assert refused.value.status == 502, message
    assert INFERENCE_KEY_ENV in message or "Internal error from Core" in message, message


def test_the_soak_sends_the_key_from_the_environment(keyed_server, monkeypatch):
    monkeypatch.setenv(INFERENCE_KEY_ENV, KEY)
    body = {"text_input": PROMPT, "parameters": SAMPLING}
    limits = Limits(deadline_s=300)
    calls = {
        "grpc": grpc_stream(keyed_server.grpc_url, LLM_MODEL, generator_inputs(PROMPT, SAMPLING), limits),
        "generate": http_generate(keyed_server.http_url, LLM_MODEL, body, limits),
        "generate_stream": http_stream(keyed_server.http_url, LLM_MODEL, body, limits),
    }
    assert all(call.code == OK for call in calls.values()), {name: call.message for name, call in calls.items()}
    monkeypatch.delenv(INFERENCE_KEY_ENV)
    assert http_generate(keyed_server.http_url, LLM_MODEL, body, limits).code != OK


def test_ask_without_the_key_says_why(keyed_server):
    env = {name: value for name, value in os.environ.items() if name != INFERENCE_KEY_ENV}
    command = [sys.executable, "-m", "tritonrag_clients.ask", "hi", "--url", keyed_server.grpc_url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "restricted" in done.stderr and INFERENCE_HEADER in done.stderr, done.stderr
