"""Wait until this replica's generator has nothing in flight: a pod's preStop hook, run before SIGTERM.

Why: tritonserver's own shutdown waits for in-flight inferences, but a decoupled model's request stops
counting as in flight once its execute() returns, and our generator streams on from its engine thread. On
SIGTERM the server therefore unloads the generator at once and the generator fails its live streams
with UNAVAILABLE ("the generator is shutting down"). Kubernetes runs preStop before it sends SIGTERM, and
has already taken the pod out of the Service's endpoints by then; this waits until the engine's running
and waiting gauges (summed over every generator version) read zero twice in a row, or --max-wait seconds
passed. A client that keeps a gRPC channel open to this pod can still start requests meanwhile: the
bound keeps the wait finite, and the pod's terminationGracePeriodSeconds must exceed it plus the exit.

    python -m tritonrag.triton.drain [--metrics-url http://127.0.0.1:8002/metrics] [--max-wait 60]
"""

from __future__ import annotations

import argparse
import sys
import time

import requests

from tritonrag.metrics import RUNNING, WAITING
from tritonrag.triton.prom import parse_metrics, total

METRICS_URL = "http://127.0.0.1:8002/metrics"


def in_flight(metrics_url: str) -> float | None:
    """Requests running or waiting in the engine (all versions), or None when the endpoint does not answer."""
    try:
        response = requests.get(metrics_url, timeout=5)
        response.raise_for_status()
    except requests.RequestException:
        return None
    samples = parse_metrics(response.text)
    return total(samples, RUNNING.name) + total(samples, WAITING.name)


def wait_until_idle(metrics_url: str, max_wait: float, interval: float = 1.0) -> str:
    """Poll until idle twice in a row (a request between two polls is not missed), the server is gone,
    or max_wait passed; returns which, for the pod's log."""
    deadline = time.monotonic() + max_wait
    idle_polls = 0
    while True:
        count = in_flight(metrics_url)
        if count is None:
            return "metrics endpoint not answering: nothing to drain"
        idle_polls = idle_polls + 1 if count == 0 else 0
        if idle_polls >= 2:
            return "idle: no request running or waiting"
        if time.monotonic() >= deadline:
            return f"gave up after {max_wait:.0f} s with {count:.0f} requests running or waiting"
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-url", default=METRICS_URL)
    parser.add_argument("--max-wait", type=float, default=60.0, help="seconds at most (default 60)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    args = parser.parse_args(argv)
    started = time.monotonic()
    outcome = wait_until_idle(args.metrics_url, args.max_wait, args.interval)
    print(f"drain: {outcome} ({time.monotonic() - started:.1f} s)", flush=True)
    return 0  # never fail the hook: Kubernetes sends SIGTERM next either way


if __name__ == "__main__":
    sys.exit(main())
