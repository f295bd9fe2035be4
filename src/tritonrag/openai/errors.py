"""Errors in OpenAI's shape and status codes, and the Triton errors they come from.

OpenAI clients branch on the status: 400 a bad request, 401 a missing or wrong key, 404 an unknown
model, 429 "slow down" (the openai client retries it), 503 the server cannot serve now, 504 the
generation ran past its deadline (the generator's `request_timeout_s`). The body is
always `{"error": {"message", "type", "param", "code"}}`.

A Triton error on a gRPC stream arrives as a message without its status code (the stream's
response carries `error_message` only), so `from_triton` reads the kind from the message our
models write (`tritonrag.errors`: InvalidInput -> INVALID_ARG, Unavailable -> UNAVAILABLE).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tritonrag.errors import DEADLINE_MARKERS, GOING_AWAY_MARKERS, INTERNAL_MARKER, SHED_LOAD_MARKERS
from tritonrag.openai.protocol import ErrorDetail, ErrorResponse


class OpenAIError(Exception):
    """An error the service answers with, in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        if self.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unknown_model(name: str, known: list[str]) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model '{name}' does not exist; this server has {', '.join(known)}",
        param="model",
        code="model_not_found",
    )


def unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key")


def from_triton(message: str) -> OpenAIError:
    """The OpenAI error for a Triton error message (see the module docstring for why by message)."""
    lowered = message.lower()
    if any(marker in lowered for marker in SHED_LOAD_MARKERS):
        return OpenAIError(429, f"The server is overloaded: {message}", type="rate_limit_error", code="overloaded")
    if any(marker in lowered for marker in GOING_AWAY_MARKERS):
        return OpenAIError(503, f"The model server is unavailable: {message}", type="server_error", code="unavailable")
    if any(marker in lowered for marker in DEADLINE_MARKERS):
        return OpenAIError(504, f"The generation timed out: {message}", type="server_error", code="deadline_exceeded")
    if lowered.startswith(INTERNAL_MARKER):
        return OpenAIError(500, message, type="server_error", code="internal_error")
    return bad_request(message)


async def openai_error_handler(request: Request, exc: OpenAIError) -> JSONResponse:
    return exc.response()


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a malformed body, as OpenAI's 400 naming the first wrong field."""
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "invalid request body")
    if param:
        message = f"{param}: {message}"
    return bad_request(message, param=param).response()


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (404 route, 405 method) in OpenAI's shape."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return OpenAIError(exc.status_code, str(exc.detail), type=kind).response()
