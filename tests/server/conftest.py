"""One real tritonserver with the whole model repository, shared by the server tests.

TRITONRAG_TEST_SERVER=<grpc host:port>,<http host:port>,<metrics host:port> runs them against a
server that is already up (started by `python -m tritonrag.triton.serve`, say) instead.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tritonrag.paths import artifacts_dir, generator_weights_dir, index_dir
from tritonrag.triton.server import TritonServer


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def server():
    if os.environ.get("TRITONRAG_TEST_SERVER"):
        grpc, http, metrics = os.environ["TRITONRAG_TEST_SERVER"].split(",")
        log = artifacts_dir() / "logs" / "test-server.log"
        yield SimpleNamespace(grpc_url=grpc, http_url=http, metrics_url=f"http://{metrics}/metrics", log_path=log)
        return
    missing = [
        p for p in (generator_weights_dir() / "model.safetensors", index_dir() / "faiss.index") if not p.exists()
    ]
    if missing:
        pytest.skip(f"artifacts missing ({', '.join(map(str, missing))}): run `make setup` first")
    instance = TritonServer.on_free_ports(log_path=artifacts_dir() / "logs" / "test-server.log")
    with instance:
        yield instance
