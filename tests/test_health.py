"""The liveness check's verdict on /metrics text (tritonrag.triton.health); a real server's in
tests/canary_server/test_dead_stub.py (live before a stub kill, not live after)."""

from tritonrag.triton.health import main, problems
from tritonrag.triton.prom import parse_metrics

HEALTHY = """
# TYPE tritonrag_router_version_up gauge
tritonrag_router_version_up{model="generator",version="1"} 1
tritonrag_router_version_up{model="generator",version="2"} 1
# TYPE tritonrag_engine_stalled gauge
tritonrag_engine_stalled{model="generator",version="1"} 0
tritonrag_engine_stalled{model="generator",version="2"} 0
"""


def test_a_healthy_server_has_no_problem():
    assert problems(parse_metrics(HEALTHY)) == []
    assert problems({}) == [], "a server without our router or engine: Triton's own liveness decides"


def test_a_dead_stub_and_a_stalled_engine_are_named():
    text = HEALTHY.replace('version="2"} 1', 'version="2"} 0').replace(
        'tritonrag_engine_stalled{model="generator",version="1"} 0',
        'tritonrag_engine_stalled{model="generator",version="1"} 1',
    )
    assert problems(parse_metrics(text)) == [
        "generator version 1: its engine loop is stalled",
        "generator version 2: its stub process has exited (Triton 2.51 does not restart it)",
    ]


def test_an_unreachable_server_is_not_live(capsys):
    # Nothing listens on port 9 (discard) here: the probe must fail, not hang or pass.
    assert main(["--http-url", "127.0.0.1:9", "--metrics-url", "http://127.0.0.1:9/metrics", "--timeout", "2"]) == 1
    assert "not live: tritonserver does not answer" in capsys.readouterr().err
