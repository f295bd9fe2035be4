"""Triton's admin APIs are locked by default: without the key they are refused, with it they answer.

A tritonserver on an empty model repository (starts in seconds) with TritonServer's default flags;
that inference needs no key is shown by every other server test (they send none).
"""

from __future__ import annotations

import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tritonrag.triton.server import ADMIN_HEADER, TritonServer

GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # Triton prefixes restricted gRPC metadata keys


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("empty-repository")
    server = TritonServer.on_free_ports(model_repository=repo, log_path=repo.parent / "admin-server.log")
    with server:
        yield server


def test_admin_http_needs_the_key(bare_server):
    base = f"http://{bare_server.http_url}/v2"
    for method, path in (("get", "/logging"), ("post", "/repository/index"), ("get", "/trace/setting")):
        refused = requests.request(method, base + path, timeout=10)
        assert refused.status_code == 403 and ADMIN_HEADER in refused.text, (path, refused.text)
        allowed = requests.request(method, base + path, headers={ADMIN_HEADER: bare_server.admin_key}, timeout=10)
        assert allowed.status_code == 200, (path, allowed.text)
    assert requests.get(base + "/health/ready", timeout=10).status_code == 200  # health stays open


def test_admin_grpc_needs_the_key(bare_server):
    client = grpcclient.InferenceServerClient(bare_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_log_settings()
        with pytest.raises(InferenceServerException, match="restricted"):
            client.unload_model("anything")
        assert client.get_log_settings(headers={GRPC_HEADER: bare_server.admin_key})
        assert client.is_server_live() and client.get_server_metadata()
    finally:
        client.close()
