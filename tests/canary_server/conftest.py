"""The canary tests' own tritonserver (one per module): whole pipeline, temporary weights file, seeded router.

The repository is the real one, except that the `llm` router reads its weights from a
temporary file, draws from a seeded generator (keyless splits are reproducible) and drives
rollouts from this server's own /metrics port. Generator version 2 is the configured canary:
the same weights on ONNX Runtime (checked in the server's log). A module may override
`server` (test_rollout.py adds broken versions to a repository without the pipeline).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from canary_helpers import DEFAULT_SPLIT, Streams, running, skip_without_artifacts, start_server

from tritonrag.triton.canary import write_config

# tests/ itself: test_replicas.py reuses the ConfigMap update of tests/test_rollout.py (the weights-file unit tests).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("canary") / "canary.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights_file):
    skip_without_artifacts()
    write_config(weights_file, DEFAULT_SPLIT)
    root = tmp_path_factory.mktemp("repo")
    with running(start_server(root, weights_file, "canary-server.log")) as (instance,):
        yield instance
    shutil.rmtree(root, ignore_errors=True)


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
