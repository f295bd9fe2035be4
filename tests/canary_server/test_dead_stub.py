"""A generator version whose Python stub dies, through a real tritonserver (this module's own).

Triton 2.51 does not restart a decoupled model's stub: after a SIGKILL the version stays READY,
refuses every new request ("Stub process ... is not healthy") and never answers the requests it
held. The `llm` router sees the stub gone from /proc (tritonrag.triton.stubs): the stream it was
waiting on ends UNAVAILABLE at once (not at its 330 s bound), unpinned `llm` and `rag` requests
go to the other version, a pin to the dead one is refused UNAVAILABLE, and the router's metrics
say which version is down, and so does the liveness probe's check (tritonrag.triton.health). Killing a stub ends this module's server for version 2, so it is one test.
"""

import os
import signal

import requests
from canary_helpers import metric, router_inputs, set_split

from polling import wait_for
from tritonrag.errors import Unavailable, error_from_message
from tritonrag.triton import health
from tritonrag_bench.soak.chaos import stub_pid
from tritonrag_clients.streaming import bytes_input, rag_inputs

LONG = {"max_tokens": 4000, "temperature": 0, "ignore_eos": True}


def test_a_killed_canary_stub_is_routed_around(server, streams, weights_file, capsys):
    probe = ["--http-url", server.http_url, "--metrics-url", server.metrics_url]
    assert wait_for(lambda: metric(server, "tritonrag_router_version_up", version="2") == 1.0)
    assert health.main(probe) == 0, capsys.readouterr().err
    set_split(weights_file, canary_weight=1.0)  # every unpinned request draws version 2
    held = streams.send(router_inputs("Tell me a very long story.", LONG, key="held"))
    assert wait_for(lambda: held.versions, timeout=300), "the long request never started streaming"
    assert held.versions[0] == 2
    stub = stub_pid(server.process.pid, 2)
    assert stub is not None, "no stub process for generator version 2"
    os.kill(stub, signal.SIGKILL)

    # The stream the dead stub held ends, typed, well before the router's bound (330 s).
    streams.wait([held], timeout=120)
    assert held.error is not None and "generator version 2 is not healthy" in held.error, held.error
    assert isinstance(error_from_message(held.error), Unavailable)
    assert held.finish_reason in (None, "None"), "it did not finish"

    # New requests: unpinned ones (keyed, random, and through the whole rag pipeline) go to version 1.
    rerouted = [streams.send(router_inputs(key=f"k{i}")) for i in range(3)] + [streams.send(router_inputs())]
    assert [r.version for r in streams.wait(rerouted)] == [1, 1, 1, 1]
    rag = streams.one(rag_inputs("What is a Python list?", top_k=3, sampling={"max_tokens": 4}), "rag")
    assert rag.error is None and rag.text and rag.versions and set(rag.versions) == {1}, rag

    # A pin to the dead version is refused UNAVAILABLE (not INVALID_ARG: the version exists, it is down).
    pinned = streams.one(router_inputs(pin="2"))
    assert pinned.error and "generator version 2 is not healthy" in pinned.error, pinned.error
    assert isinstance(error_from_message(pinned.error), Unavailable)
    assert streams.one(router_inputs(pin="1")).version == 1
    pinned_rag = rag_inputs("What is a set?", sampling={"max_tokens": 2}) + [bytes_input("model_version", "2")]
    assert "is not healthy" in (streams.one(pinned_rag, "rag").error or "")

    # The router's metrics name the dead version; Triton itself still calls it READY (its 2.51 limit).
    assert wait_for(lambda: metric(server, "tritonrag_router_version_up", version="2") == 0.0)
    assert metric(server, "tritonrag_router_version_up", version="1") == 1.0
    assert metric(server, "tritonrag_router_rerouted_total", version="2") >= 5
    ready = requests.get(f"http://{server.http_url}/v2/models/generator/versions/2/ready", timeout=10)
    assert ready.status_code == 200, "Triton 2.51 reports a version with a dead stub READY; if not, simplify"
    # ...so the pod's liveness probe (tritonrag.triton.health) says it, and the kubelet would restart it.
    capsys.readouterr()
    assert health.main(probe) == 1
    assert "not live: generator version 2: its stub process has exited" in capsys.readouterr().err
    assert not streams.stray_errors
