"""Prometheus /metrics text as flat samples: sums by name and labels, histogram quantiles as Prometheus computes them.

The canary CLI and the benchmark read Triton's /metrics through these; the names they ask for
come from `tritonrag.metrics`.
"""

from __future__ import annotations

import math
from collections import defaultdict

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
    """The sum of every sample called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


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
