"""POST /v1/chat/completions: the LLM over templated messages, or `rag` over the last user message."""

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
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    TokenLogprob,
    TopLogprob,
    new_id,
    now,
)
from tritonrag.openai.service import Service, service_of
from tritonrag.openai.streaming import EventStream, unless_disconnected
from tritonrag.openai.tokenizing import message_text
from tritonrag.openai.triton_map import Ask, ModelInterface, Piece, PositionLogprob

router = APIRouter()
HANDLED = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "seed", "stop", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "passages",
}  # fmt: skip


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    service = service_of(request)
    model = service.model(body.model, "chat")
    ask = chat_ask(service, model, body)
    pieces = service.bridge.generate(model, ask)
    context = ChatContext(body, model, service, new_id("chatcmpl"), now())
    if body.stream:
        return EventStream(chat_events(await unless_disconnected(first_then_rest(pieces), request), context))
    answer = await unless_disconnected(gather(pieces), request)
    return context.completion(answer).dump()


def chat_ask(service: Service, model: ModelInterface, body: ChatCompletionRequest) -> Ask:
    """Check the request and turn it into what the model is asked (400 for what cannot be served)."""
    refuse_unsupported(body, HANDLED)
    if not body.messages:
        raise bad_request("messages must hold at least one message", param="messages")
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream = true", param="stream_options")
    logprobs = None
    if body.logprobs:
        if not model.returns_logprobs:
            raise bad_request(f"logprobs are not available from model '{model.name}'", param="logprobs")
        logprobs = body.top_logprobs or 0
    elif body.top_logprobs:
        raise bad_request("top_logprobs needs logprobs = true", param="top_logprobs")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    sampling = build_sampling(body, max_tokens, logprobs)
    if model.kind == "rag":
        return Ask(last_user_message(body), sampling, body.passages)
    if body.passages is not None:
        raise bad_request("passages is for the rag model only", param="passages")
    return Ask(service.chat_template.prompt(body.messages), sampling)


def last_user_message(body: ChatCompletionRequest) -> str:
    """rag answers one question: the last user message (earlier turns and system messages are not used)."""
    for message in reversed(body.messages):
        if message.role == "user":
            return message_text(message)
    raise bad_request("rag needs a user message (its question)", param="messages")


class ChatContext:
    """One chat request's identity and options, shared by its chunks and its final response."""

    def __init__(self, body: ChatCompletionRequest, model: ModelInterface, service: Service, id: str, created: int):
        self.body, self.model, self.service, self.id, self.created = body, model, service, id, created
        self.rag = model.kind == "rag"

    def sources(self, sources: list[dict] | None) -> list[dict] | None:
        return self.service.passages.with_text(sources) if self.rag else None

    def logprobs(self, positions: list[PositionLogprob] | None) -> ChatLogprobs | None:
        if not self.body.logprobs or not positions:
            return None
        n = self.body.top_logprobs or 0
        content = [
            TokenLogprob(
                token=p.token,
                logprob=p.logprob,
                bytes=list(p.token.encode("utf-8")),
                top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode("utf-8"))) for t, lp in top_n(p, n)],
            )
            for p in positions
        ]
        return ChatLogprobs(content=content)

    def completion(self, answer: Answer) -> ChatCompletion:
        choice = ChatChoice(
            message=AssistantMessage(content=answer.text),
            logprobs=self.logprobs(answer.logprobs),
            finish_reason=answer.openai_finish_reason,
        )
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model.name,
            choices=[choice],
            usage=answer.usage(),
            sources=self.sources(answer.sources),
        )

    def chunk(self, choice: ChatChunkChoice | None, **extra) -> str:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model.name, choices=[choice] if choice else [], **extra
        )
        return sse(chunk.dump())

    def piece_chunk(self, piece: Piece) -> str:
        choice = ChatChunkChoice(delta=ChatDelta(content=piece.text), logprobs=self.logprobs(piece.logprobs))
        return self.chunk(choice, sources=self.sources(piece.sources))


async def chat_events(pieces: AsyncIterator[Piece], context: ChatContext) -> AsyncIterator[str]:
    """The stream: a role chunk, a chunk per piece (sources where they arrive), the finish, usage if asked, [DONE]."""
    answer = Answer()
    yield context.chunk(ChatChunkChoice(delta=ChatDelta(role="assistant", content="")))
    try:
        async for piece in pieces:
            answer.add(piece)
            if piece.text or piece.sources or piece.logprobs:
                yield context.piece_chunk(piece)
    except OpenAIError as error:
        yield error_event(error)
        yield DONE
        return
    finish = ChatChunkChoice(delta=ChatDelta(), finish_reason=answer.openai_finish_reason)
    yield context.chunk(finish, sources=context.sources(answer.sources))
    options = context.body.stream_options
    if options is not None and options.include_usage:
        yield context.chunk(None, usage=answer.usage())
    yield DONE
