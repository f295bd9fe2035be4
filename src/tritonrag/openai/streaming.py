"""Server-sent events that stop their generation when the client goes away, and requests that do too.

Starlette notices a vanished client only when it next writes (ASGI 2.4 servers), which may be a
whole prefill later, and it leaves the body iterator for the garbage collector to close. Here a
stream listens for the disconnect itself and always closes its iterator, so the Triton request is
cancelled at once (bridge.generate cancels its gRPC call when closed) and its KV blocks freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio
from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tritonrag.openai.errors import OpenAIError

T = TypeVar("T")
POLL_SECONDS = 0.25


class EventStream(StreamingResponse):
    """`text/event-stream` response whose generation ends with the connection."""

    media_type = "text/event-stream"

    def __init__(self, events, **kwargs):
        super().__init__(events, media_type=self.media_type, headers={"Cache-Control": "no-cache"}, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client is gone mid-write
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            await self.body_iterator.aclose()


async def unless_disconnected(work: Awaitable[T], request: Request) -> T:
    """Run `work` (a whole non-streamed generation) but cancel it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise OpenAIError(499, "client closed the request", type="invalid_request_error", code="cancelled")
    finally:
        if not task.done():
            task.cancel()
