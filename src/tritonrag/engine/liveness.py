"""Whether the engine loop still makes progress, watched from another thread.

A loop stuck in a step (a hung kernel, a deadlock in a runtime) otherwise looks alive: the
model stays READY in Triton, requests queue behind it, and streams wait forever. The loop beats
a `Heartbeat` every iteration; a `StallWatch` thread sees a loop that has work and has not beaten
for `stall_timeout_s`, and calls `on_stall` once with why (how long, how much work, and where the
loop thread is, from its stack). It calls `on_recover` if the loop beats again.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Heartbeat:
    """When the engine loop last made progress (an iteration ended), on the monotonic clock."""

    clock: Callable[[], float] = time.monotonic
    last: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last = self.clock()

    def beat(self) -> None:
        self.last = self.clock()

    def age(self) -> float:
        return self.clock() - self.last


@dataclass
class StallWatch:
    """Calls `on_stall(reason)` when the loop has work (`busy() > 0`) and no beat for `stall_timeout_s`."""

    heartbeat: Heartbeat
    busy: Callable[[], int]  # requests the loop owes progress to (queued or running)
    loop_thread: threading.Thread
    stall_timeout_s: float
    on_stall: Callable[[str], None]
    on_recover: Callable[[], None]
    stalled: str | None = None  # the reason, while stalled

    def check(self) -> None:
        """One look; the watch thread calls this every quarter of the timeout."""
        age, waiting = self.heartbeat.age(), self.busy()
        if self.stalled is None and waiting and age >= self.stall_timeout_s:
            self.stalled = (
                f"the engine loop made no progress for {age:.0f} s (stall_timeout_s {self.stall_timeout_s:g}) "
                f"with {waiting} requests waiting on it; its thread is at: {where(self.loop_thread)}"
            )
            self.on_stall(self.stalled)
        elif self.stalled is not None and age < self.stall_timeout_s:
            self.stalled = None
            self.on_recover()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.stall_timeout_s / 4):
            self.check()


def where(thread: threading.Thread) -> str:
    """The innermost frames of `thread`'s stack, one line each (empty if it is not running)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "(not running)"
    lines = traceback.format_stack(frame, limit=None)[-4:]
    return " <- ".join(line.strip().splitlines()[0] for line in reversed(lines))
