"""Liveness as a pod should see it: Triton's own /v2/health/live, and what Triton 2.51 cannot see.

Two failures leave tritonserver live and every model READY in 2.51: a generator version whose
Python stub exited (the backend does not restart a decoupled model's stub; the `llm` router
routes around it and shows `tritonrag_router_version_up` 0) and a stalled engine loop
(`tritonrag_engine_stalled` 1). Either only heals by a restart, so the Kubernetes liveness
probe runs this (`python -m tritonrag.triton.health`): exit 0 when live, 1 with the reason
otherwise, and the kubelet restarts the container (its preStop drain still runs).

    python -m tritonrag.triton.health [--http-url 127.0.0.1:8000] [--metrics-url http://127.0.0.1:8002/metrics]
"""

from __future__ import annotations

import argparse
import sys

import requests

from tritonrag import metrics
from tritonrag.triton.prom import Samples, parse_metrics


def problems(samples: Samples) -> list[str]:
    """What keeps this server from serving as configured, in words (empty: nothing)."""
    found = []
    for (name, labels), value in sorted(samples.items(), key=lambda item: sorted(item[0][1])):
        label = dict(labels)
        where = f"{label.get('model', 'generator')} version {label.get('version', '?')}"
        if name == metrics.ROUTER_VERSION_UP.name and value == 0:
            found.append(f"{where}: its stub process has exited (Triton 2.51 does not restart it)")
        elif name == metrics.ENGINE_STALLED.name and value == 1:
            found.append(f"{where}: its engine loop is stalled")
    return found


def check(http_url: str, metrics_url: str, timeout: float = 4.0) -> list[str]:
    """Triton live, and no problem on its /metrics."""
    try:
        live = requests.get(f"http://{http_url}/v2/health/live", timeout=timeout)
        if live.status_code != 200:
            return [f"tritonserver is not live (HTTP {live.status_code})"]
        text = requests.get(metrics_url, timeout=timeout).text
    except requests.RequestException as exc:
        return [f"tritonserver does not answer: {exc}"]
    return problems(parse_metrics(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonrag.triton.health", description=__doc__.splitlines()[0])
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="tritonserver's HTTP address")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds per request")
    args = parser.parse_args(argv)
    found = check(args.http_url, args.metrics_url, args.timeout)
    for problem in found:
        print(f"not live: {problem}", file=sys.stderr)
    if not found:
        print("live")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
