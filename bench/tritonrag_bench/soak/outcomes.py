"""One call's outcome, its code (typed from an HTTP status, a gRPC status or an error message), and the ledger.

A gRPC stream's error reaches the client as a message alone (Triton 2.51 sends no code on a
stream), so its code is read from the words our stages and Triton write: the markers of the router's
own classifier (tritonrag.errors.error_from_message). Triton's message for a dead Python stub gets a
code of its own, STUB_DEAD, so the report tells the chaos kill's effect from our errors.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from tritonrag.errors import DEADLINE_MARKERS, GOING_AWAY_MARKERS, INTERNAL_MARKER, SHED_LOAD_MARKERS

OK, CANCELLED, DISCONNECTED = "OK", "CANCELLED", "DISCONNECTED"
INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"
STUB_DEAD, TRITON_JSON, HUNG = "STUB_DEAD", "TRITON_JSON", "HUNG"
CODES = (OK, CANCELLED, DISCONNECTED, INVALID_ARG, UNAVAILABLE, INTERNAL, STUB_DEAD, TRITON_JSON, HUNG)

# Lower-case words of an overload, going-away or deadline refusal: the router's own classifier's
# (tritonrag.errors), and the loopback's "the generator cannot be reached".
UNAVAILABLE_MARKERS = (*SHED_LOAD_MARKERS, *GOING_AWAY_MARKERS, *DEADLINE_MARKERS, "cannot be reached")
STUB_DEAD_MARKER = "is not healthy"  # python_be.cc: "Stub process '<instance>' is not healthy."
TRITON_JSON_MARKER = "failed to parse the request json"  # Triton's HTTP front end, before any model


def code_of_message(message: str) -> str:
    """The code behind an error message that came without one (a gRPC stream's error)."""
    lowered = message.lower()
    if STUB_DEAD_MARKER in lowered:
        return STUB_DEAD
    if any(marker in lowered for marker in UNAVAILABLE_MARKERS):
        return UNAVAILABLE
    if INTERNAL_MARKER in lowered or "traceback" in lowered:
        return INTERNAL
    return INVALID_ARG


def code_of_grpc(status: str | None, message: str) -> str:
    """A gRPC error's code: its status when it has one (a failed call), else read from its message."""
    if status is None:
        return code_of_message(message)
    name = status.removeprefix("StatusCode.")
    if name == "UNAVAILABLE":
        return UNAVAILABLE
    if name == "INVALID_ARGUMENT":
        return code_of_message(message) if STUB_DEAD_MARKER in message.lower() else INVALID_ARG
    if name == "CANCELLED":
        return CANCELLED
    return STUB_DEAD if STUB_DEAD_MARKER in message.lower() else INTERNAL


def code_of_http(status: int, message: str) -> str:
    """An HTTP error's code. Triton 2.51's `generate` answers a model's UNAVAILABLE with 400 (README,
    Security and limits), so a 400 is read from its message too."""
    if status in (429, 503):
        return UNAVAILABLE
    if status == 400:
        return code_of_message(message)
    if status == 500 and TRITON_JSON_MARKER in message.lower():
        return TRITON_JSON
    return STUB_DEAD if STUB_DEAD_MARKER in message.lower() else INTERNAL


@dataclass
class Outcome:
    """One call: what was sent, how it ended, how long it took, and whether that end was acceptable."""

    scenario: str  # e.g. llm_stream, bad_nan_temperature, burst_llm
    route: str  # e.g. "grpc llm", "http rag"
    code: str
    start: float  # seconds since the soak started
    total: float  # seconds until the call ended (or gave up, HUNG)
    ttft: float | None = None  # seconds until the first text
    responses: int = 0
    served_version: int | None = None
    message: str = ""
    phase: str = ""  # the timeline's phase when the call started
    expected: bool = True  # the code is one the scenario accepts (and an INVALID_ARG names its field)


class Ledger:
    """Every outcome, appended from many threads; counts read at any time for the progress line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.in_flight = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            self.in_flight -= 1
            self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def codes(self) -> Counter:
        return Counter(o.code for o in self.snapshot())
