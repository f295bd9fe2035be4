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
