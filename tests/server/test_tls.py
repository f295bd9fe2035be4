"""TLS as an option, through real processes: tritonserver's gRPC endpoint and the OpenAI service's HTTPS.

A throwaway certificate authority (trustme) issues a certificate for 127.0.0.1 and localhost. The
server runs `llm` and `generator` version 1 only (a repository of the two), with gRPC over TLS: a
plaintext client is refused, a client that trusts the CA streams from `llm`, whose router reaches
the generator over the same TLS endpoint (tritonrag.triton.loopback). The OpenAI service dials
Triton with that CA and serves HTTPS with its own certificate; the `openai` client, trusting the
CA, gets an answer, and plain HTTP to its port gets none.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from repositories import llm_repository
from tritonclient.utils import InferenceServerException

from tritonrag.defaults import LLM_MODEL
from tritonrag.paths import artifacts_dir, generator_weights_dir
from tritonrag.triton.server import GrpcTls, TritonServer, free_port
from tritonrag_clients.streaming import StreamingClient

trustme = pytest.importorskip("trustme", reason="trustme (a test dependency) makes the throwaway certificates")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, and a certificate and key it issued for 127.0.0.1 and localhost, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    issued.cert_chain_pems[0].write_to_path(str(files["cert"]))
    issued.private_key_pem.write_to_path(str(files["key"]))
    return files


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    if not (generator_weights_dir() / "model.safetensors").exists():
        pytest.skip("generator weights missing: run `make setup` first")
    repo = llm_repository(tmp_path_factory.mktemp("tls"))
    tls = GrpcTls(pki["cert"], pki["key"], pki["ca"])
    log = artifacts_dir() / "logs" / "tls-server.log"
    with TritonServer.on_free_ports(model_repository=repo, log_path=log, tls=tls) as server:
        yield server


def llm_inputs(prompt: str, max_tokens: int) -> list:
    def tensor(name: str, value, datatype: str):
        t = grpcclient.InferInput(name, [1], datatype)
        t.set_data_from_numpy(np.array([value], dtype=np.object_ if datatype == "BYTES" else None))
        return t

    return [
        tensor("text_input", prompt.encode(), "BYTES"),
        tensor("stream", True, "BOOL"),
        tensor("sampling_parameters", json.dumps({"max_tokens": max_tokens, "temperature": 0}).encode(), "BYTES"),
    ]


def test_plaintext_grpc_is_refused(tls_server):
    client = grpcclient.InferenceServerClient(tls_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException):
            client.is_server_live(client_timeout=10)
    finally:
        client.close()


def test_llm_streams_over_tls_through_the_routers_tls_loopback(tls_server, pki):
    with StreamingClient(tls_server.grpc_url, root_cert=str(pki["ca"])) as client:
        events = list(client.stream(LLM_MODEL, llm_inputs("The capital of France is", 8)))
    assert all(e.error is None for e in events), [e.error for e in events if e.error is not None]
    assert "".join(e.text for e in events).strip()


def test_openai_service_serves_https_and_dials_triton_over_tls(tls_server, pki, tmp_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tritonrag.openai",
        "--triton-url",
        tls_server.grpc_url,
        "--triton-root-cert",
        str(pki["ca"]),
        "--ssl-certfile",
        str(pki["cert"]),
        "--ssl-keyfile",
        str(pki["key"]),
        "--port",
        str(port),
    ]
    log = tmp_path / "openai.log"
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    https = httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"])), timeout=300)
    try:
        assert _healthy(https, f"https://127.0.0.1:{port}/health", process), log.read_text()[-3000:]
        client = openai.OpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key="none", http_client=https)
        answer = client.completions.create(model=LLM_MODEL, prompt="The capital of France is", max_tokens=4)
        assert answer.choices[0].text.strip()
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
    finally:
        https.close()  # uvicorn's shutdown waits for open keep-alive connections
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def _healthy(client: httpx.Client, url: str, process: subprocess.Popen, timeout: float = 300.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if client.get(url).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False
