"""Replicas agree: two tritonservers reading one canary weights file route a key alike and follow each change.

Both servers (`llm` and generator versions 1 and 2, no retrieval pipeline) get the weights
file from $TRITONRAG_CANARY_FILE, a Kubernetes ConfigMap mount as the kubelet lays it out
(`canary.json -> ..data/canary.json`, `..data` swapped atomically to a new folder on every
update, the old folder deleted). Each routed request stats the file, so a change is in force
for the next request on every replica; the router's gauges follow within its 1 s re-read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from canary_helpers import Streams, metric, router_inputs, running, skip_without_artifacts, start_server

from polling import wait_for
from test_rollout import configmap_update
from tritonrag.triton.canary import CANARY_FILE_ENV, RoutingConfig, choose

SMALL = {"kv_cache_memory_bytes": str(32 * 2**20), "warmup": "false"}
VERSIONS = {1: SMALL, 2: {**SMALL, "runtime": "torch"}}  # routing is under test, not runtimes
KEYS = [f"user-{i}" for i in range(60)]


@pytest.fixture(scope="module")
def mount(tmp_path_factory) -> Path:
    mount = tmp_path_factory.mktemp("etc-tritonrag-canary")
    configmap_update(mount, RoutingConfig(1, 2), "2026_11_30_00_00_00.0")
    return mount


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, mount):
    """Two servers started at once, both told the mounted file by the environment (their own
    config names another path, which must not be read)."""
    skip_without_artifacts()
    unused = tmp_path_factory.mktemp("unused") / "canary.json"
    servers = [
        start_server(
            tmp_path_factory.mktemp(f"replica{i}"), unused, f"canary-replica{i}.log", versions=VERSIONS, pipeline=False
        )
        for i in range(2)
    ]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(CANARY_FILE_ENV, str(mount / "canary.json"))  # each server reads it when it starts
            with running(*servers) as started:
                yield started
    finally:
        for server in servers:
            shutil.rmtree(server.model_repository.parent, ignore_errors=True)
    assert not unused.exists()


@pytest.fixture(scope="module")
def clients(replicas):
    streams = [Streams(server.grpc_url) for server in replicas]
    yield streams
    for client in streams:
        client.close()


def route_all(clients, keys) -> list[dict[str, int]]:
    """Each replica's version per key (one token each, all keys in flight at once)."""
    sent = [[(key, client.send(router_inputs(key=key))) for key in keys] for client in clients]
    out = []
    for client, pairs in zip(clients, sent):
        client.wait([result for _, result in pairs])
        out.append({key: result.version for key, result in pairs})
    return out


def test_the_same_key_goes_to_the_same_version_on_every_replica(mount, clients):
    configmap_update(mount, RoutingConfig(1, 2, 0.3), "2026_11_30_00_01_00.1")
    first, second = route_all(clients, KEYS)
    config = RoutingConfig(1, 2, 0.3)
    assert first == second == {key: choose(config, key=key).version for key in KEYS}
    assert set(first.values()) == {1, 2}


def test_every_replica_follows_each_configmap_update_from_the_next_request(mount, replicas, clients):
    for i, weight in enumerate((0.0, 0.7, 1.0, 0.1)):
        config = RoutingConfig(1, 2, weight)
        configmap_update(mount, config, f"2026_11_30_00_0{i + 2}_00.{i + 2}")
        expected = {key: choose(config, key=key).version for key in KEYS}
        assert route_all(clients, KEYS) == [expected, expected], f"weight {weight}"
        for server in replicas:  # the gauges: the router's watcher re-reads the file every second
            assert wait_for(
                lambda s=server, w=weight: metric(s, "tritonrag_router_weight", role="canary", version="2") == w
            )
    assert len([p for p in mount.iterdir() if p.name.startswith("..2026")]) == 1, "the kubelet removed old folders"
    for server in replicas:
        assert "ignoring" not in server.log_path.read_text(), "no replica failed to read the file"
