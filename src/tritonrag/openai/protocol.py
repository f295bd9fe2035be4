"""The OpenAI API's request and response bodies that this service speaks, as pydantic models, in one file.

Field names and meanings are OpenAI's (https://platform.openai.com/docs/api-reference), the subset a
single-choice text model can honour. Requests keep unknown fields (`extra="allow"`) so that the
service can tell apart vLLM-style sampling extensions it passes on (`top_k`, `min_p`, `ignore_eos`, ...)
from fields it refuses by name; responses drop fields left at None.

Our extensions, documented in the README: `sources` on `rag` responses and on the chunks of a `rag`
stream that carry them (the first and the last), and `passages` (how many to retrieve) on `rag` requests.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Body(BaseModel):
    """A response body; `dump()` leaves out fields that are None (as OpenAI does for absent ones)."""

    model_config = ConfigDict(extra="allow")

    def dump(self) -> dict:
        return self.model_dump(exclude_none=True)


# ---- requests ---------------------------------------------------------------------------------


class StreamOptions(_Request):
    include_usage: bool = False


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class _Sampling(_Request):
    """What chat and completions requests share."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    passages: int | None = None  # rag only: how many passages to retrieve (the ensemble's top_k)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


# ---- responses --------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(_Body):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class TopLogprob(_Body):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Body):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(_Body):
    content: list[TokenLogprob]


class CompletionLogprobs(_Body):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class AssistantMessage(_Body):
    role: str = "assistant"
    content: str


class ChatChoice(_Body):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletion(_Body):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    sources: list[dict[str, Any]] | None = None  # rag only: the passages the answer was given


class ChatDelta(_Body):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(_Body):
    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Body):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    sources: list[dict[str, Any]] | None = None


class CompletionChoice(_Body):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(_Body):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    sources: list[dict[str, Any]] | None = None


class ModelCard(_Body):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "tritonrag"
    kind: str  # ours: "llm", "rag" or "embedding", so a client can tell them apart


class ModelList(_Body):
    object: str = "list"
    data: list[ModelCard]


class EmbeddingData(_Body):
    object: str = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(_Body):
    object: str = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ErrorDetail(_Body):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
