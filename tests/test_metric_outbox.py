"""MetricOutbox: the engine loop queues metric updates; they reach the metrics coalesced, and none is lost."""

from __future__ import annotations

import threading

from polling import wait_for
from tritonrag.triton.metric_outbox import MetricOutbox


class Metric:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, float]] = []
        self.fail = fail
        self.threads: set[str] = set()

    def _call(self, method: str, value: float) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("the server went away")
        self.calls.append((method, value))

    def set(self, value: float) -> None:
        self._call("set", value)

    def increment(self, value: float) -> None:
        self._call("increment", value)

    def observe(self, value: float) -> None:
        self._call("observe", value)


def test_gauges_send_their_last_value_counters_their_sum_histograms_every_value():
    outbox = MetricOutbox(thread=False)
    gauge, counter, histogram = Metric(), Metric(), Metric()
    for value in (1, 2, 3):
        outbox.set(gauge, value)
        outbox.increment(counter, value)
        outbox.observe(histogram, value / 10)
    assert gauge.calls == counter.calls == histogram.calls == []  # queued, nothing sent
    outbox.flush()
    assert gauge.calls == [("set", 3)]
    assert counter.calls == [("increment", 6)]
    assert histogram.calls == [("observe", 0.1), ("observe", 0.2), ("observe", 0.3)]
    outbox.flush()  # nothing new: nothing sent again
    assert len(gauge.calls) == len(counter.calls) == 1 and len(histogram.calls) == 3


def test_a_failing_metric_loses_its_update_only():
    outbox = MetricOutbox(thread=False)
    broken, fine = Metric(fail=True), Metric()
    outbox.increment(broken, 1)
    outbox.increment(fine, 1)
    outbox.flush()
    assert fine.calls == [("increment", 1)]


def test_the_thread_sends_off_the_callers_thread_and_close_sends_the_rest():
    outbox = MetricOutbox(flush_s=0.01)
    counter = Metric()
    outbox.increment(counter, 2)
    assert wait_for(lambda: counter.calls == [("increment", 2)], timeout=10)
    assert counter.threads == {"tritonrag-metrics"}
    outbox.observe(counter, 5)
    outbox.close()  # sends what is left at once, and the thread ends
    assert counter.calls[-1] == ("observe", 5)
    assert wait_for(lambda: not outbox._thread.is_alive(), timeout=10)
