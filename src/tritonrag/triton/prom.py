"""Prometheus /metrics text as flat samples: sums by name and labels, histogram quantiles as Prometheus computes them.

The canary CLI, the rollout driver (in the CLI or inside the router) and the benchmark read
Triton's /metrics through these; the names they ask for come from `tritonrag.metrics`. A
window is the growth between two scrapes (`grown`), as Prometheus' increase() over a range.
"""

from __future__ import annotations

import math
from collections import defaultdict

import requests
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text format -> {(sample name, frozenset(labels)): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample called `name` whose labels include `labels`.

    A counter Triton exposes without the `_total` suffix (`nv_inference_request_success`) is
    named with it by prometheus_client's parser (0.26: OpenMetrics naming), so either is found.
    """
    want = set(labels.items())
    names = {name} if name.endswith("_total") else {name, f"{name}_total"}
    return sum(v for (n, ls), v in samples.items() if n in names and want <= ls)


def quantile(samples: Samples, name: str, q: float, **labels: str) -> float | None:
    """A histogram quantile as Prometheus' histogram_quantile() computes it (linear within a bucket)."""
    want = set(labels.items())
    buckets: dict[float, float] = defaultdict(float)
    for (n, ls), value in samples.items():
        if n == f"{name}_bucket" and want <= ls:
            le = dict(ls)["le"]
            buckets[math.inf if le == "+Inf" else float(le)] += value
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def grown(after: Samples, before: Samples) -> Samples:
    """Counter and histogram growth from `before` to `after` (a window); gauges are meaningless here."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def was_reset(after: Samples, before: Samples) -> bool:
    """True when a counter went down or vanished between the scrapes: the process behind it restarted."""
    return any(
        after.get(key, 0.0) < value - 1e-9
        for key, value in before.items()
        if key[0].endswith(("_total", "_count", "_bucket", "_sum"))
    )


def scrape(urls: list[str] | tuple[str, ...], timeout: float = 10.0) -> Samples:
    """Every endpoint's samples, summed (the replicas of one deployment read as one)."""
    merged: Samples = defaultdict(float)
    for url in urls:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        for key, value in parse_metrics(response.text).items():
            merged[key] += value
    return dict(merged)
