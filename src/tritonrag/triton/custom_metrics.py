"""Triton custom metrics (`pb_utils.MetricFamily`) that several threads of one model may update.

Tritonserver 2.51's Python backend crashes (SIGSEGV in `Metric::LoadFromSharedMemory`, read by
the server's stub-to-parent monitor thread; or boost::interprocess::lock_exception) when two
threads of one stub update custom metrics at the same time: each update re-saves the metric to
shared memory, and a concurrent one can free what the server is still reading. Caught with gdb
on a 400-stream cancel storm (the router counting aborts on its watcher and forwarding threads
while the generator's engine loop set its gauges). So every call into a metric of this process
(family made, metric made, increment, set, observe, value) goes through one lock.
"""

from __future__ import annotations

import threading
from typing import Any

from tritonrag import metrics
from tritonrag.metrics import Family

_LOCK = threading.Lock()  # one per stub process: the race is between any two metric calls in it


class SerialMetric:
    """A `pb_utils.Metric` whose every call holds the process's metric lock."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def increment(self, value: float) -> None:
        with _LOCK:
            self._metric.increment(value)

    def set(self, value: float) -> None:
        with _LOCK:
            self._metric.set(value)

    def observe(self, value: float) -> None:
        with _LOCK:
            self._metric.observe(value)

    def value(self) -> float:
        with _LOCK:
            return self._metric.value()


class SerialFamily:
    """A `pb_utils.MetricFamily` whose metrics are SerialMetrics."""

    def __init__(self, pb_utils: Any, family: Family) -> None:
        kinds = {
            metrics.COUNTER: pb_utils.MetricFamily.COUNTER,
            metrics.GAUGE: pb_utils.MetricFamily.GAUGE,
            metrics.HISTOGRAM: pb_utils.MetricFamily.HISTOGRAM,
        }
        with _LOCK:
            self._family = pb_utils.MetricFamily(name=family.name, description=family.doc, kind=kinds[family.kind])

    def Metric(self, **kwargs: Any) -> SerialMetric:  # noqa: N802 - pb_utils.MetricFamily's name
        with _LOCK:
            return SerialMetric(self._family.Metric(**kwargs))


def triton_family(pb_utils: Any):
    """Make families with Triton's Python backend API (`pb_utils` is triton_python_backend_utils)."""
    return lambda family: SerialFamily(pb_utils, family)
