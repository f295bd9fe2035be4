"""Sampling parameters: the one parser and validator for the `sampling_parameters` JSON.

Both the `rag` ensemble and the `generator` model accept the same JSON object
(the convention of Triton's vLLM / TensorRT-LLM backends). Every bad value is
reported as `InvalidInput` with a message naming the field, so the Triton
adapters can turn it into an INVALID_ARG error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from tritonrag.errors import InvalidInput

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 128


@dataclass
class SamplingParams:
    """How one request is decoded. temperature 0 means greedy."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, 1, MAX_TOKENS_LIMIT)
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise InvalidInput(f"sampling_parameters.temperature must be >= 0, got {self.temperature}")
        _check_number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"sampling_parameters.top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k, 0, None)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**63 - 1)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidInput("sampling_parameters.stop must be a string or a list of non-empty strings")
        if not isinstance(self.stop_token_ids, list):
            raise InvalidInput("sampling_parameters.stop_token_ids must be a list of integers")
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids[]", token_id, 0, None)
        if not isinstance(self.ignore_eos, bool):
            raise InvalidInput("sampling_parameters.ignore_eos must be a boolean")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_json(cls, raw: str | bytes | None, **defaults) -> SamplingParams:
        """Parse the request's JSON; absent or empty means all defaults."""
        if raw is None:
            return cls(**defaults)
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput("sampling_parameters is not valid UTF-8") from exc
        if not raw.strip():
            return cls(**defaults)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"sampling_parameters is not valid JSON: {exc.msg} at position {exc.pos}") from exc
        if not isinstance(data, dict):
            raise InvalidInput("sampling_parameters must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"sampling_parameters has unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{**defaults, **data})

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})


def _check_int(name: str, value, low: int | None, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"sampling_parameters.{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise InvalidInput(f"sampling_parameters.{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise InvalidInput(f"sampling_parameters.{name} must be <= {high}, got {value}")


def _check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"sampling_parameters.{name} must be a number, got {value!r}")
