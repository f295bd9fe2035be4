"""Custom-metric updates off the engine loop: the loop queues them, a thread sends them to Triton.

Every `pb_utils.Metric` call is a round trip to the tritonserver process through shared memory,
made while holding the GIL. The engine's observer made about 17 of them per step at batch 1
(gauges, counters, the inter-token histogram twice per token) and ~80 at batch 32, all on the
loop thread, between steps. Queued here, they cost the loop a list append each; the outbox's
thread sends them every `flush_s`, coalesced where the metric's meaning allows: a gauge sends its
last value, a counter the sum of its increments, a histogram every observation (Triton's API
observes one value per call). /metrics is at most `flush_s` behind the engine.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

FLUSH_S = 0.25


class MetricOutbox:
    """Queues set / increment / observe on metric objects; `flush` applies them (its thread, or a test)."""

    def __init__(self, flush_s: float = FLUSH_S, thread: bool = True) -> None:
        self._lock = threading.Lock()
        self._gauges: dict[int, tuple[Any, float]] = {}
        self._counters: dict[int, tuple[Any, float]] = {}
        self._observations: list[tuple[Any, float]] = []
        self._send_lock = threading.Lock()  # flushes from the thread and from close() never interleave
        self._closed = threading.Event()
        if thread:
            self._thread = threading.Thread(target=self._run, args=(flush_s,), name="tritonrag-metrics", daemon=True)
            self._thread.start()

    def set(self, metric: Any, value: float) -> None:
        with self._lock:
            self._gauges[id(metric)] = (metric, value)

    def increment(self, metric: Any, value: float) -> None:
        with self._lock:
            _, total = self._counters.get(id(metric), (metric, 0.0))
            self._counters[id(metric)] = (metric, total + value)

    def observe(self, metric: Any, value: float) -> None:
        with self._lock:
            self._observations.append((metric, value))

    def flush(self) -> None:
        """Send what is queued. A metric that raises loses that update, never the others."""
        with self._send_lock:
            with self._lock:
                gauges, self._gauges = self._gauges, {}
                counters, self._counters = self._counters, {}
                observations, self._observations = self._observations, []
            for method, updates in (
                ("set", gauges.values()),
                ("increment", counters.values()),
                ("observe", observations),
            ):
                for metric, value in updates:
                    try:
                        getattr(metric, method)(value)
                    except Exception:  # noqa: BLE001 - metrics must not take the model down
                        log.exception("metric %s failed", method)

    def close(self) -> None:
        """Stop the thread after a last flush."""
        self._closed.set()
        self.flush()

    def _run(self, flush_s: float) -> None:
        while not self._closed.wait(flush_s):
            self.flush()
