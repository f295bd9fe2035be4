"""Sampling parameters: the one parser and validator for the `sampling_parameters` JSON.

Both the `rag` ensemble and the LLM model accept the same JSON object with vLLM's
`SamplingParams` names (the convention of Triton's vLLM backend). Values may come as
JSON strings, as genai-perf and vllm_backend's clients send them (`{"max_tokens": "32"}`):
vllm_backend converts each value with the type of vLLM's field (`int(v)`, `float(v)`,
`bool(v)`) and drops nulls, and so do we, with two corrections that only refuse
mistakes vllm_backend would let through: a boolean string must say true or false
(vllm_backend's `bool("false")` is True), and a fractional number is not truncated to
an integer. Ranges are vLLM's. Every bad value raises `InvalidInput` naming the key, for
the Triton adapters to turn into INVALID_ARG.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tritonrag.errors import InvalidInput

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 128
MAX_LOGPROBS = 20  # vLLM's default `max_logprobs`: the most alternatives one position may ask for
GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS: a temperature under it decodes greedily
MAX_JSON_BYTES = 64 * 1024  # a request's JSON object (sampling_parameters, request parameters)
MAX_STOP_STRINGS = 16  # each stop string is searched for in every step's new text: bound the work
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_SAMPLING_TOP_K = 2**31 - 1  # beyond any vocabulary; bigger values overflow torch.topk

_BOOL_STRINGS = {"true": True, "false": False, "1": True, "0": False}


def _to_int(name: str, value: Any) -> int:
    """vllm_backend's `int(value)`, refusing what it would silently truncate (1.5, True)."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidInput(f"sampling_parameters.{name} must be an integer, got {value!r}")


def _to_float(name: str, value: Any) -> float:
    """vllm_backend's `float(value)`; NaN and infinities (also as "nan", "inf") are refused."""
    number = math.nan
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise InvalidInput(f"sampling_parameters.{name} must be a number, got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            pass
    else:
        raise InvalidInput(f"sampling_parameters.{name} must be a number, got {value!r}")
    if not math.isfinite(number):
        raise InvalidInput(f"sampling_parameters.{name} must be a finite number, got {value!r}")
    return number


def _to_bool(name: str, value: Any) -> bool:
    """true/false as JSON, 0/1, or the strings "true"/"false"/"1"/"0" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_STRINGS:
        return _BOOL_STRINGS[value.strip().lower()]
    raise InvalidInput(f"sampling_parameters.{name} must be a boolean (true or false), got {value!r}")


def _to_stop(name: str, value: Any) -> list[str]:
    """A string (one stop string, as in vLLM) or a list of non-empty strings, bounded in count and length."""
    stop = [value] if isinstance(value, str) else value
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidInput(f"sampling_parameters.{name} must be a string or a list of non-empty strings")
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidInput(f"sampling_parameters.{name} has {len(stop)} strings; the limit is {MAX_STOP_STRINGS}")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise InvalidInput(f"sampling_parameters.{name}: a stop string is longer than {MAX_STOP_CHARS} characters")
    return list(stop)


def _to_token_ids(name: str, value: Any) -> list[int]:
    """A list of integers; also a string holding a JSON list, as Triton request parameters cannot carry lists."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, list):
        raise InvalidInput(f"sampling_parameters.{name} must be a list of integers, got {value!r}")
    if len(value) > MAX_STOP_TOKEN_IDS:
        raise InvalidInput(f"sampling_parameters.{name} has {len(value)} ids; the limit is {MAX_STOP_TOKEN_IDS}")
    return [_to_int(f"{name}[]", token_id) for token_id in value]


# vLLM keys we accept only at the one value we implement: a client that sends vLLM's default works.
_FIXED: dict[str, tuple[Callable[[str, Any], Any], object]] = {
    "n": (_to_int, 1),
    "best_of": (_to_int, 1),
    "use_beam_search": (_to_bool, False),
    "detokenize": (_to_bool, True),
    "include_stop_str_in_output": (_to_bool, False),
    "spaces_between_special_tokens": (_to_bool, True),
}
_ONLY_NULL = ("prompt_logprobs",)  # vLLM keys we do not implement; null (vLLM's default) is accepted


@dataclass
class SamplingParams:
    """How one request is decoded, with vLLM's names, defaults and ranges. temperature 0 means greedy.

    `logprobs`: None returns none; N >= 0 returns, per generated token, its logprob and
    rank plus the N most likely alternatives, from the raw model output (vLLM v1's default
    `raw_logprobs`: before penalties, temperature and truncation).
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    min_tokens: int = 0  # EOS and stop token ids cannot be sampled before this many output tokens
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or vLLM's -1) = disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0  # over output tokens
    frequency_penalty: float = 0.0  # over output tokens
    repetition_penalty: float = 1.0  # over prompt and output tokens
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self._coerce()
        _check_range("max_tokens", self.max_tokens, 1, MAX_TOKENS_LIMIT)
        _check_range("min_tokens", self.min_tokens, 0, self.max_tokens, "max_tokens")
        _check_range("temperature", self.temperature, 0, None)
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"sampling_parameters.top_p must be in (0, 1], got {self.top_p}")
        _check_range("top_k", self.top_k, -1, MAX_SAMPLING_TOP_K)
        self.top_k = max(self.top_k, 0)  # vLLM's -1 and our 0 both disable it
        _check_range("min_p", self.min_p, 0, 1)
        _check_range("presence_penalty", self.presence_penalty, -2, 2)
        _check_range("frequency_penalty", self.frequency_penalty, -2, 2)
        if self.repetition_penalty <= 0:
            raise InvalidInput(f"sampling_parameters.repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.seed is not None:
            _check_range("seed", self.seed, 0, 2**63 - 1)
        for token_id in self.stop_token_ids:
            _check_range("stop_token_ids[]", token_id, 0, 2**63 - 1)
        if self.logprobs is not None:
            _check_range("logprobs", self.logprobs, 0, MAX_LOGPROBS)

    def _coerce(self) -> None:
        """Bring every field to its type (strings included, the way vllm_backend does)."""
        for name in ("max_tokens", "min_tokens", "top_k"):
            setattr(self, name, _to_int(name, getattr(self, name)))
        for name in ("seed", "logprobs"):
            if getattr(self, name) is not None:
                setattr(self, name, _to_int(name, getattr(self, name)))
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            setattr(self, name, _to_float(name, getattr(self, name)))
        for name in ("ignore_eos", "skip_special_tokens"):
            setattr(self, name, _to_bool(name, getattr(self, name)))
        self.stop = _to_stop("stop", self.stop)
        self.stop_token_ids = _to_token_ids("stop_token_ids", self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    @classmethod
    def from_json(cls, raw: str | bytes | None, **defaults: Any) -> SamplingParams:
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
        return cls.from_dict(load_json_object(raw, "sampling_parameters"), **defaults)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **defaults: Any) -> SamplingParams:
        """Build from a decoded JSON object (or Triton request parameters); nulls mean the default."""
        own = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - own - set(_FIXED) - set(_ONLY_NULL))
        if unknown:
            raise InvalidInput(f"sampling_parameters has unknown field(s) {unknown}; known: {sorted(known_keys())}")
        for key in set(data) & set(_FIXED):
            _check_fixed(key, data[key])
        for key in set(data) & set(_ONLY_NULL):
            if data[key] is not None:
                raise InvalidInput(f"sampling_parameters.{key} is not supported (only null), got {data[key]!r}")
        given = {key: value for key, value in data.items() if key in own and value is not None}
        return cls(**{**defaults, **given})

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})


def load_json_object(raw: str, what: str, verb: str = "is") -> dict:
    """A client's JSON object, every way it can be bad an InvalidInput naming `what`.

    json.loads raises more than JSONDecodeError on hostile text: ValueError for an integer over
    Python's 4,300-digit limit, RecursionError for deep nesting; the size cap comes first.
    """
    if len(raw) > MAX_JSON_BYTES:
        raise InvalidInput(f"{what} {verb} {len(raw)} characters long; the limit is {MAX_JSON_BYTES}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} {verb} not valid JSON: {exc.msg} at position {exc.pos}") from exc
    except RecursionError:
        raise InvalidInput(f"{what} {verb} nested too deeply") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise InvalidInput(f"{what} holds a value Python cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return data


def known_keys() -> frozenset[str]:
    """Every key `from_dict` accepts: our fields and the vLLM keys held at vLLM's default."""
    return frozenset({f.name for f in fields(SamplingParams)} | set(_FIXED) | set(_ONLY_NULL))


def _check_fixed(key: str, value: Any) -> None:
    if value is None:
        return
    convert, only = _FIXED[key]
    if convert(key, value) != only:
        raise InvalidInput(f"sampling_parameters.{key} is not supported except {json.dumps(only)}, got {value!r}")


def _check_range(name: str, value: float, low: float | None, high: float | None, high_name: str = "") -> None:
    if low is not None and value < low:
        raise InvalidInput(f"sampling_parameters.{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        bound = f"{high_name} ({high})" if high_name else f"{high}"
        raise InvalidInput(f"sampling_parameters.{name} must be <= {bound}, got {value}")
