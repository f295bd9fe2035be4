"""The canary tests' own tritonserver (one per module): whole pipeline, temporary weights file, seeded router.

The repository is the real one, except that the router (`llm`) reads its weights from a
temporary file and draws from a seeded generator (keyless splits are reproducible), and
generator version 2 runs in bfloat16 (a precision canary: its per-version override is
checked in the server's log).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from canary_helpers import DEFAULT_SPLIT, Streams, build_repository

from tritonrag.paths import artifacts_dir, generator_weights_dir, index_dir
from tritonrag.triton.canary import write_config
from tritonrag.triton.server import TritonServer


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("canary") / "canary.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights_file):
    missing = [
        p for p in (generator_weights_dir() / "model.safetensors", index_dir() / "faiss.index") if not p.exists()
    ]
    if missing:
        pytest.skip(f"artifacts missing ({', '.join(map(str, missing))}): run `make setup` first")
    write_config(weights_file, DEFAULT_SPLIT)
    repo = build_repository(tmp_path_factory.mktemp("repo"), weights_file)
    instance = TritonServer.on_free_ports(
        model_repository=repo, log_path=artifacts_dir() / "logs" / "canary-server.log"
    )
    with instance:
        yield instance
    shutil.rmtree(repo, ignore_errors=True)


@pytest.fixture(autouse=True)
def default_split(request, weights_file):
    """Every test starts from stable 1, canary 2 at 0%, no shadow."""
    if "server" in request.fixturenames:
        write_config(weights_file, DEFAULT_SPLIT)
    yield


@pytest.fixture()
def streams(server):
    client = Streams(server.grpc_url)
    yield client
    client.close()
