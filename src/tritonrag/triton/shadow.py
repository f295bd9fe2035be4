"""Shadow agreement: a mirrored greedy request's output against the output the user got from the stable version.

In shadow mode the router sends a copy of a stable request to the canary and drops the
copy's output. For a greedy request (temperature 0) both versions should write the same
text when they run the same weights, so the router compares them: `ShadowPair` meets the
two outputs (the primary and the mirror finish in either order, on different threads) and
hands one `Agreement` to the router's counters when both have finished well. A pair where
either side failed or the caller cancelled is not compared (failures are counted apart).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from tritonrag.errors import InvalidInput
from tritonrag.sampling import SamplingParams


def is_greedy(sampling_json: bytes | str | None) -> bool:
    """Whether a request's sampling parameters decode greedily (the default: temperature 0)."""
    try:
        return SamplingParams.from_json(sampling_json).greedy
    except (InvalidInput, TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Agreement:
    """One compared pair: identical text or not, and each side's length in characters."""

    exact: bool
    primary_chars: int
    shadow_chars: int


def compare(primary: str, shadow: str) -> Agreement:
    return Agreement(primary == shadow, len(primary), len(shadow))


class ShadowPair:
    """Where a primary's and its mirror's outputs meet; the second to arrive compares them once."""

    def __init__(self, on_compared: Callable[[Agreement], None]) -> None:
        self._on_compared = on_compared
        self._outputs: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def primary_done(self, text: str | None) -> None:
        """The stable's whole output, or None when it failed or was cancelled (nothing is compared)."""
        self._arrive("primary", text)

    def shadow_done(self, text: str | None) -> None:
        self._arrive("shadow", text)

    def _arrive(self, side: str, text: str | None) -> None:
        with self._lock:
            self._outputs[side] = text
            if len(self._outputs) < 2:
                return
            primary, shadow = self._outputs["primary"], self._outputs["shadow"]
        if primary is not None and shadow is not None:
            self._on_compared(compare(primary, shadow))
