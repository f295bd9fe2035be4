"""Waiting on a condition in tests: poll until it holds or the time is up (never a timed assert).

On the test path through pyproject's `pythonpath = ["tests"]`: `from polling import wait_for`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.2) -> bool:
    """True as soon as `condition()` is truthy, False if it never was within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def settled(read: Callable[[], object], quiet_s: float = 0.8, timeout: float = 30.0) -> object:
    """`read()` once it has stopped changing for `quiet_s` (e.g. the engine's counters, which reach
    /metrics up to tritonrag.triton.metric_outbox.FLUSH_S after the request they count); the last
    value if it never settles within `timeout`."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = read()
        if again == value:
            return value
        value = again
    return value
