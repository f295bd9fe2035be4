"""What chat and text completions share: the request's sampling keys, and its answer from a stream of pieces.

Sampling keys are tritonrag.sampling's (vLLM's names): the OpenAI fields map one to one
(`max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, the penalties,
`logprobs`), vLLM-style extension fields (`top_k`, `min_p`, `ignore_eos`, ...) pass through when
`SamplingParams` knows them, and the whole set is checked by `SamplingParams` here, so a bad value is a
400 naming the field before anything reaches Triton. A field this server cannot honour is refused by
name, unless it asks for the neutral value (a penalty of 0), which is the same as not asking.
Absent `temperature` is OpenAI's default, 1.0 (the engine's own default is greedy).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from tritonrag.errors import InvalidInput
from tritonrag.openai.errors import OpenAIError, bad_request
from tritonrag.openai.protocol import Usage
from tritonrag.openai.triton_map import Piece, PositionLogprob
from tritonrag.sampling import SamplingParams, known_keys

OPENAI_TEMPERATURE = 1.0
# OpenAI fields this server accepts and ignores: they do not change what is generated.
IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls", "stream_options"}
# Fields it cannot honour, with the values that ask for nothing (sent by some clients by default).
HARMLESS = {
    "n": (None, 1),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "suffix": (None, ""),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "min_p": (None, 0, 0.0),
    "min_tokens": (None, 0),
}
PASSED = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


def sampling_keys() -> frozenset[str]:
    """The keys the engine's SamplingParams takes (vLLM's names)."""
    return known_keys()


def refuse_unsupported(request: BaseModel, handled: set[str]) -> None:
    """400 for a field of the request that this server cannot honour (named), unless it asks for nothing.

    Sampling keys the engine knows pass on (SamplingParams then checks their values); OpenAI fields
    with no engine counterpart (`n`, `tools`, ...) are refused unless they hold their no-op value.
    """
    known, extra = sampling_keys(), dict(request.model_extra or {})
    given = {name: getattr(request, name) for name in type(request).model_fields if name not in handled} | extra
    for name, value in given.items():
        passed = name in known and (name in PASSED or name in extra)
        if name in IGNORED or passed or value in HARMLESS.get(name, (None,)):
            continue
        if name in HARMLESS:
            raise bad_request(f"'{name}' = {value!r} is not supported by this server", param=name)
        raise bad_request(f"Unrecognized request argument supplied: {name}", param=name)


def build_sampling(request: BaseModel, max_tokens: int | None, logprobs: int | None) -> dict:
    """The request's sampling keys for Triton, checked by SamplingParams (a bad value is a 400)."""
    known = sampling_keys()
    keys: dict[str, Any] = {"temperature": OPENAI_TEMPERATURE}
    for name in PASSED:
        value = getattr(request, name, None)
        if value is not None:
            keys[name] = value
    if max_tokens is not None:
        keys["max_tokens"] = max_tokens
    if logprobs is not None:
        keys["logprobs"] = logprobs
    keys |= {name: value for name, value in (request.model_extra or {}).items() if name in known and value is not None}
    for name in [n for n in keys if n not in known]:
        if keys[name] in HARMLESS.get(name, ()):
            del keys[name]
        else:
            raise bad_request(f"'{name}' is not supported by this server's engine", param=name)
    try:
        SamplingParams.from_json(json.dumps(keys))
    except InvalidInput as exc:
        message = str(exc)
        param = next((n for n in keys if f".{n} " in message or message.startswith(f"sampling_parameters.{n}")), None)
        raise bad_request(message.replace("sampling_parameters.", ""), param=param) from None
    return keys


@dataclass
class Answer:
    """A whole generation, gathered from its pieces."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    counted: bool = False  # the model reported token counts
    sources: list[dict] | None = None
    logprobs: list[PositionLogprob] = field(default_factory=list)

    def add(self, piece: Piece) -> None:
        self.text += piece.text
        self.finish_reason = piece.finish_reason or self.finish_reason
        if piece.prompt_tokens is not None:
            self.prompt_tokens = piece.prompt_tokens
        if piece.completion_tokens is not None:
            self.completion_tokens += piece.completion_tokens
            self.counted = True
        self.sources = self.sources if piece.sources is None else piece.sources
        self.logprobs += piece.logprobs or []

    @property
    def openai_finish_reason(self) -> str:
        """OpenAI's reasons are stop and length; an engine abort only happens when the client left."""
        return "length" if self.finish_reason == "length" else "stop"

    def usage(self) -> Usage | None:
        """The engine's token counts, when the model reported them."""
        if self.prompt_tokens is None or not self.counted:
            return None
        total = self.prompt_tokens + self.completion_tokens
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, total_tokens=total)


async def gather(pieces: AsyncIterator[Piece]) -> Answer:
    answer = Answer()
    async for piece in pieces:
        answer.add(piece)
    return answer


async def first_then_rest(pieces: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    """Wait for the first piece (so that an early error still gets its HTTP status), then stream."""
    try:
        first: Piece | None = await pieces.__anext__()
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncIterator[Piece]:
        try:
            if first is not None:
                yield first
            async for piece in pieces:
                yield piece
        finally:
            await pieces.aclose()

    return rest()


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


DONE = sse("[DONE]")


def error_event(error: OpenAIError) -> str:
    """An error after the stream began (the status line is sent): an event in OpenAI's error shape."""
    return sse(error.body())


def top_n(position: PositionLogprob, n: int) -> list[tuple[str, float]]:
    return [(t.token, t.logprob) for t in position.top[:n]]
