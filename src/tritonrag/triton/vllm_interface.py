"""vllm_backend's request and response interface for our LLM models: names, types, shapes and rules, written once.

Triton's vLLM backend (triton-inference-server/vllm_backend, `src/model.py` and
`src/utils/request.py`) defines what LLM clients send: genai-perf, perf_analyzer, Triton's
OpenAI frontend and vllm_backend's own samples. The public `llm` model and the internal
`generator` speak it; their config.pbtxt files declare these tensors (tests/test_vllm_interface.py
checks that they agree), the model.py adapters parse requests and build responses with the
functions here, and the clients build requests from the same names.

The rules, as vllm_backend has them:
- `stream` defaults to false: one response with the whole text.
- `exclude_input_in_output` false prepends the prompt to the text. When absent it is false
  for a non-streamed request (the prompt is prepended) and true for a streamed one; asking
  for the prompt in a stream is an error.
- Each `return_<output>` flag adds `<output>` to every response of that request, with
  vllm_backend's per-response meaning: `num_output_tokens` and `logprobs` cover the tokens
  of that response, `cumulative_logprob` is the running sum, `finish_reason` is "None"
  until the final response.
- Sampling parameters come as the `sampling_parameters` JSON tensor or as request
  parameters (the HTTP generate extension's `parameters` object, gRPC request parameters);
  the interface's flags may come as request parameters too. A tensor wins over a parameter
  of the same name.
- Ours: a request's deadline is Triton's request timeout, in microseconds (tritonclient's
  `timeout=`, which the adapters read with `request.timeout()`). Triton 2.51's HTTP generate
  extension does not make its `parameters.timeout` the request's timeout; it arrives as a request
  parameter, read here into `LlmRequest.timeout_us` with the same meaning.

This module is plain Python and numpy (no Triton import), so it is tested without a server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tritonrag.defaults import MAX_PROMPT_BYTES
from tritonrag.errors import InvalidInput
from tritonrag.sampling import known_keys, load_json_object


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as config.pbtxt declares it."""

    name: str
    data_type: str  # config.pbtxt spelling: TYPE_STRING, TYPE_BOOL, ...
    dims: tuple[int, ...]
    optional: bool = False


def _flag(name: str) -> TensorSpec:
    return TensorSpec(name, "TYPE_BOOL", (1,), optional=True)


# vllm_backend's inputs (its `image` and `embedding_request` are for models we do not serve).
TEXT_INPUT = TensorSpec("text_input", "TYPE_STRING", (1,))
SAMPLING_PARAMETERS = TensorSpec("sampling_parameters", "TYPE_STRING", (1,), optional=True)
STREAM, EXCLUDE_INPUT = _flag("stream"), _flag("exclude_input_in_output")
RETURNABLE = ("finish_reason", "cumulative_logprob", "logprobs", "num_input_tokens", "num_output_tokens")
INPUTS = (TEXT_INPUT, STREAM, SAMPLING_PARAMETERS, EXCLUDE_INPUT, *(_flag(f"return_{name}") for name in RETURNABLE))

# vllm_backend's outputs, with its types and shapes.
OUTPUTS = (
    TensorSpec("text_output", "TYPE_STRING", (-1,)),
    TensorSpec("finish_reason", "TYPE_STRING", (-1,)),
    TensorSpec("cumulative_logprob", "TYPE_FP32", (-1,)),
    TensorSpec("logprobs", "TYPE_STRING", (-1,)),
    TensorSpec("num_input_tokens", "TYPE_UINT32", (1,)),
    TensorSpec("num_output_tokens", "TYPE_UINT32", (-1,)),
)

# Ours, in the same style: the prompt tokens served from the prefix cache, when asked.
OWN_RETURNABLE = ("num_cached_tokens",)
OWN_INPUTS = (_flag("return_num_cached_tokens"),)
OWN_OUTPUTS = (TensorSpec("num_cached_tokens", "TYPE_UINT32", (1,)),)

# The generator's internal input: the ensemble's sources passed through (returned with the first response).
SOURCES_INPUT = TensorSpec("sources", "TYPE_STRING", (1,), optional=True)
SOURCES_OUTPUT = TensorSpec("sources", "TYPE_STRING", (-1,))

# The public model's routing inputs and the version that answered.
ROUTING_INPUTS = (
    TensorSpec("routing_key", "TYPE_STRING", (1,), optional=True),
    TensorSpec("model_version", "TYPE_STRING", (1,), optional=True),
)
SERVED_VERSION = TensorSpec("served_version", "TYPE_INT32", (1,))

GENERATOR_INPUTS = (*INPUTS, *OWN_INPUTS, SOURCES_INPUT)
GENERATOR_OUTPUTS = (*OUTPUTS, *OWN_OUTPUTS, SOURCES_OUTPUT)
LLM_INPUTS = (*INPUTS, *OWN_INPUTS, SOURCES_INPUT, *ROUTING_INPUTS)
LLM_OUTPUTS = (*GENERATOR_OUTPUTS, SERVED_VERSION)

FLAGS = (STREAM.name, EXCLUDE_INPUT.name, *(f"return_{name}" for name in (*RETURNABLE, *OWN_RETURNABLE)))
# Triton's request timeout as a request parameter (HTTP generate's `parameters`): microseconds, 0 for none.
TIMEOUT_PARAMETER = "timeout"
MAX_TIMEOUT_US = 2**63 - 1  # Triton's field is an int64
NUMPY_TYPES = {"TYPE_STRING": np.object_, "TYPE_BOOL": np.bool_, "TYPE_FP32": np.float32, "TYPE_UINT32": np.uint32}
_TRUE_FALSE = {"true": True, "false": False, "1": True, "0": False}

# Reads one input tensor by name as a numpy array, or None when the request lacks it.
InputReader = Callable[[str], "np.ndarray | None"]


@dataclass(frozen=True)
class LlmRequest:
    """One generate request, read: what to generate and what to send back."""

    prompt: str
    sampling: dict = field(default_factory=dict)  # raw keys and values; the engine's SamplingParams checks them
    stream: bool = False
    prepend_input: bool = True
    returns: frozenset[str] = frozenset()  # outputs asked for with return_<name>
    timeout_us: int = 0  # the `timeout` request parameter (HTTP generate); 0: none given

    def client_timeout_us(self, triton_timeout_us: int) -> int:
        """The client's timeout in microseconds (0: none): Triton's own (`request.timeout()`), else the parameter."""
        return int(triton_timeout_us) or self.timeout_us

    @property
    def asks_logprobs(self) -> bool:
        """The client asked for per-token logprobs (sampling key `logprobs`, as in vLLM)."""
        return self.sampling.get("logprobs") is not None

    def sampling_json(self) -> str:
        return json.dumps(self.sampling)

    def engine_sampling(self) -> dict:
        """The sampling keys for the engine.

        A cumulative logprob, and a streamed response's token count, come from the sampled
        tokens' logprobs (one entry per token): the engine computes them (`logprobs: 0`, no
        alternatives) when the client did not ask for logprobs itself.
        """
        counts = "num_output_tokens" in self.returns and self.stream
        if ("cumulative_logprob" in self.returns or counts) and not self.asks_logprobs:
            return self.sampling | {"logprobs": 0}
        return self.sampling

    def to_inputs(self) -> dict[str, np.ndarray]:
        """The request as input tensors with every flag explicit: what a router passes on."""
        flags = {STREAM.name: self.stream, EXCLUDE_INPUT.name: not self.prepend_input}
        flags |= {f"return_{name}": name in self.returns for name in (*RETURNABLE, *OWN_RETURNABLE)}
        tensors = {name: np.array([value], dtype=np.bool_) for name, value in flags.items()}
        tensors[TEXT_INPUT.name] = np.array([self.prompt.encode("utf-8")], dtype=np.object_)
        tensors[SAMPLING_PARAMETERS.name] = np.array([self.sampling_json().encode("utf-8")], dtype=np.object_)
        return tensors


def read_request(read: InputReader, parameters: str | Mapping | None = None) -> LlmRequest:
    """Parse a request's tensors and request parameters the way vllm_backend does; InvalidInput names the problem."""
    params = _parameters(parameters)
    prompt = _prompt(read)
    flags = {name: _flag_value(read, params, name) for name in FLAGS}
    stream = bool(flags[STREAM.name])
    exclude = flags[EXCLUDE_INPUT.name]
    prepend = (not stream) if exclude is None else not exclude
    if prepend and stream:
        raise InvalidInput("exclude_input_in_output = false is not allowed when streaming (as in vllm_backend)")
    returns = frozenset(name for name in (*RETURNABLE, *OWN_RETURNABLE) if flags[f"return_{name}"])
    return LlmRequest(prompt, _sampling(read, params), stream, prepend, returns, _timeout_us(params))


def _parameters(parameters: str | Mapping | None) -> dict:
    if parameters is None or isinstance(parameters, Mapping):
        return dict(parameters or {})
    return load_json_object(parameters, "request parameters", "are") if parameters.strip() else {}


def _timeout_us(params: dict) -> int:
    """The `timeout` request parameter: whole microseconds (a JSON integer or a string of digits), 0 for none."""
    given = params.get(TIMEOUT_PARAMETER, 0)
    digits = given.strip() if isinstance(given, str) else ""
    # Capped length first: int() of 5,000 digits raises.
    if digits.isascii() and digits.isdigit() and len(digits) <= len(str(MAX_TIMEOUT_US)):
        given = int(digits)
    if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= MAX_TIMEOUT_US:
        raise InvalidInput(
            f"parameter {TIMEOUT_PARAMETER!r} must be whole microseconds from 0 to {MAX_TIMEOUT_US}, got {given!r:.80}"
        )
    return given


def _single(read: InputReader, name: str):
    tensor = read(name)
    if tensor is None:
        return None
    values = np.asarray(tensor).reshape(-1)
    if values.size != 1:
        raise InvalidInput(f"input {name!r} must hold exactly one element per request, got {values.size}")
    return values[0]


def _prompt(read: InputReader) -> str:
    value = _single(read, TEXT_INPUT.name)
    if value is None:
        raise InvalidInput(f"input {TEXT_INPUT.name!r} is required")
    size = len(value.encode("utf-8")) if isinstance(value, str) else len(bytes(value))
    if size == 0:  # refused here, before the router opens a stream to the generator
        raise InvalidInput("text_input is empty")
    if size > MAX_PROMPT_BYTES:  # before any tokenizing: the tokenizer's time grows with the text
        raise InvalidInput(f"text_input is {size} bytes long; the limit is {MAX_PROMPT_BYTES}")
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"text_input is not valid UTF-8 (bad byte at {exc.start})") from exc


def _flag_value(read: InputReader, params: dict, name: str) -> bool | None:
    """The tensor's value, else the request parameter's (JSON boolean, 0/1 or "true"/"false"), else None."""
    value = _single(read, name)
    if value is not None:
        return bool(value)
    if name not in params:
        return None
    given = params[name]
    if isinstance(given, bool):
        return given
    if isinstance(given, int) and given in (0, 1):
        return bool(given)
    if isinstance(given, str) and given.strip().lower() in _TRUE_FALSE:
        return _TRUE_FALSE[given.strip().lower()]
    raise InvalidInput(f"parameter {name!r} must be a boolean (true or false), got {given!r}")


def _sampling(read: InputReader, params: dict) -> dict:
    """Request parameters that are sampling keys, overridden by the `sampling_parameters` tensor's keys.

    A parameter that is neither a flag nor a sampling key is refused, naming it.
    """
    unknown = sorted(set(params) - set(FLAGS) - {TIMEOUT_PARAMETER} - known_keys())
    if unknown:
        raise InvalidInput(
            f"unknown request parameter(s) {unknown}: neither a sampling key ({sorted(known_keys())}), "
            f"an input flag ({list(FLAGS)}) nor {TIMEOUT_PARAMETER!r}"
        )
    sampling = {key: value for key, value in params.items() if key not in (*FLAGS, TIMEOUT_PARAMETER)}
    raw = _single(read, SAMPLING_PARAMETERS.name)
    if raw is None:
        return sampling
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput("sampling_parameters is not valid UTF-8") from exc
    if not str(raw).strip():
        return sampling
    return sampling | load_json_object(str(raw), "sampling_parameters")


class Logprob(Protocol):
    """One entry of a position's `{token_id: Logprob}` (the engine's serving.Logprob, vLLM's shape)."""

    logprob: float
    rank: int
    decoded_token: str


PositionLogprobs = Mapping[int, Logprob]  # the sampled token first, then the most likely ones


@dataclass
class Piece:
    """What one response reports: its text, its tokens' count and logprobs, and the end when it is the last."""

    text: str
    num_tokens: int = 0
    logprobs: Sequence[PositionLogprobs] | None = None  # None: the engine was not asked for logprobs
    finish_reason: str | None = None
    num_input_tokens: int = 0
    num_cached_tokens: int = 0


@dataclass
class ResponseBuilder:
    """Turns a request's pieces into vllm_backend's output tensors, keeping the running logprob sum between them."""

    request: LlmRequest
    cumulative_logprob: float = 0.0

    def outputs(self, piece: Piece, prefix: str = "") -> dict[str, np.ndarray]:
        """Output tensors for one response; `prefix` (the prompt, when prepended) goes before its text."""
        returns = self.request.returns
        if piece.logprobs is not None:
            self.cumulative_logprob += sum(next(iter(position.values())).logprob for position in piece.logprobs)
        out = {"text_output": _strings([prefix + piece.text])}
        if "finish_reason" in returns:
            out["finish_reason"] = _strings([str(piece.finish_reason)])  # "None" until the end, as vllm_backend
        if "cumulative_logprob" in returns:
            value = self.cumulative_logprob if piece.logprobs is not None else math.nan
            out["cumulative_logprob"] = np.array([value], dtype=np.float32)
        if "logprobs" in returns:
            out["logprobs"] = _strings([self._logprobs_json(piece)])
        if "num_input_tokens" in returns:
            out["num_input_tokens"] = np.array([piece.num_input_tokens], dtype=np.uint32)
        if "num_output_tokens" in returns:
            out["num_output_tokens"] = np.array([piece.num_tokens], dtype=np.uint32)
        if "num_cached_tokens" in returns and piece.finish_reason is not None:  # known at the end only
            out["num_cached_tokens"] = np.array([piece.num_cached_tokens], dtype=np.uint32)
        return out

    def _logprobs_json(self, piece: Piece) -> str:
        """vllm_backend's JSON: per position, {token id: {logprob, rank, decoded_token}}; "null" if not asked."""
        if piece.logprobs is None or not self.request.asks_logprobs:
            return "null"
        return json.dumps(
            [
                {
                    str(token_id): {"logprob": entry.logprob, "rank": entry.rank, "decoded_token": entry.decoded_token}
                    for token_id, entry in position.items()
                }
                for position in piece.logprobs
            ]
        )


def _strings(values: list[str]) -> np.ndarray:
    return np.array([value.encode("utf-8") for value in values], dtype=np.object_)
