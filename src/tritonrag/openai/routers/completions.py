"""POST /v1/completions: the LLM continues the prompt as given (no template); `rag` takes it as the question."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from tritonrag.openai.errors import OpenAIError, bad_request
from tritonrag.openai.generation import (
    DONE,
    Answer,
    build_sampling,
    error_event,
    first_then_rest,
    gather,
    refuse_unsupported,
    sse,
    top_n,
)
from tritonrag.openai.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    new_id,
    now,
)
from tritonrag.openai.service import Service, service_of
from tritonrag.openai.streaming import EventStream, unless_disconnected
from tritonrag.openai.triton_map import Ask, ModelInterface, Piece, PositionLogprob

router = APIRouter()
HANDLED = {
    "model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop",
    "presence_penalty", "frequency_penalty", "logprobs", "echo", "passages",
}  # fmt: skip


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request):
    service = service_of(request)
    model = service.model(body.model, "completions")
    ask = completion_ask(model, body)
    pieces = service.bridge.generate(model, ask)
    context = CompletionContext(body, model, service, new_id("cmpl"), now(), ask.text if body.echo else "")
    if body.stream:
        return EventStream(completion_events(await unless_disconnected(first_then_rest(pieces), request), context))
    answer = await unless_disconnected(gather(pieces), request)
    return context.completion(answer).dump()


def single_prompt(body: CompletionRequest) -> str:
    """One text prompt: a string or a list of one string (token-id prompts and batches are refused)."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise bad_request("prompt must be one string (a list of prompts or token ids is not supported)", "prompt")
        prompt = prompt[0]
    if not prompt:
        raise bad_request("prompt is empty", param="prompt")
    return prompt


def completion_ask(model: ModelInterface, body: CompletionRequest) -> Ask:
    refuse_unsupported(body, HANDLED)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream = true", param="stream_options")
    if body.logprobs is not None and not model.returns_logprobs:
        raise bad_request(f"logprobs are not available from model '{model.name}'", param="logprobs")
    if body.passages is not None and model.kind != "rag":
        raise bad_request("passages is for the rag model only", param="passages")
    sampling = build_sampling(body, body.max_tokens, body.logprobs)
    return Ask(single_prompt(body), sampling, body.passages)


class CompletionContext:
    """One completion request's identity and options, shared by its chunks and its final response."""

    def __init__(
        self, body: CompletionRequest, model: ModelInterface, service: Service, id: str, created: int, echo: str
    ):
        self.body, self.model, self.service, self.id, self.created = body, model, service, id, created
        self.echo = echo
        self.rag = model.kind == "rag"

    def sources(self, sources: list[dict] | None) -> list[dict] | None:
        return self.service.passages.with_text(sources) if self.rag else None

    def logprobs(self, positions: list[PositionLogprob] | None, offset: int) -> CompletionLogprobs | None:
        """OpenAI's legacy shape: tokens, their logprobs, the top alternatives, and text offsets."""
        if self.body.logprobs is None or not positions:
            return None
        offsets, at = [], offset
        for p in positions:
            offsets.append(at)
            at += len(p.token)
        return CompletionLogprobs(
            tokens=[p.token for p in positions],
            token_logprobs=[p.logprob for p in positions],
            top_logprobs=[dict(top_n(p, self.body.logprobs)) for p in positions],
            text_offset=offsets,
        )

    def completion(self, answer: Answer) -> Completion:
        choice = CompletionChoice(
            text=self.echo + answer.text,
            logprobs=self.logprobs(answer.logprobs, len(self.echo)),
            finish_reason=answer.openai_finish_reason,
        )
        return Completion(
            id=self.id,
            created=self.created,
            model=self.model.name,
            choices=[choice],
            usage=answer.usage(),
            sources=self.sources(answer.sources),
        )

    def chunk(self, choice: CompletionChoice | None, **extra) -> str:
        chunk = Completion(id=self.id, created=self.created, model=self.model.name, choices=[choice] if choice else [])
        body = chunk.dump() | {key: value for key, value in extra.items() if value is not None}
        return sse(body)


async def completion_events(pieces: AsyncIterator[Piece], context: CompletionContext) -> AsyncIterator[str]:
    """The stream: the echoed prompt if asked, a chunk per piece, the finish, usage if asked, [DONE]."""
    answer = Answer()
    if context.echo:
        yield context.chunk(CompletionChoice(text=context.echo))
    try:
        async for piece in pieces:
            offset = len(context.echo) + len(answer.text)
            answer.add(piece)
            if piece.text or piece.sources or piece.logprobs:
                choice = CompletionChoice(text=piece.text, logprobs=context.logprobs(piece.logprobs, offset))
                yield context.chunk(choice, sources=context.sources(piece.sources))
    except OpenAIError as error:
        yield error_event(error)
        yield DONE
        return
    finish = CompletionChoice(text="", finish_reason=answer.openai_finish_reason)
    yield context.chunk(finish, sources=context.sources(answer.sources))
    options = context.body.stream_options
    if options is not None and options.include_usage:
        usage = answer.usage()
        yield context.chunk(None, usage=usage.dump() if usage else None)
    yield DONE
