"""Errors the library raises; Triton adapters map them to Triton error codes."""


class InvalidInput(ValueError):
    """The request itself is wrong (maps to INVALID_ARG); the server keeps serving."""


class Unavailable(RuntimeError):
    """The request is valid but cannot be taken now, e.g. a full waiting queue (maps to UNAVAILABLE)."""


# A Triton error on a gRPC stream arrives as its message alone (the stream's response carries
# `error_message`, no code), so whoever reads one back (the `llm` router's loopback streams, the
# OpenAI service) recovers the kind from the words our stages and Triton write. Lower case.
SHED_LOAD_MARKERS = ("queue is full", "retry later", "exceeds maximum queue size", "rate limit")
GOING_AWAY_MARKERS = (
    "shutting down",
    "is not ready",
    "is not at ready state",
    "is stalled",
    "is not healthy",  # Triton 2.51: "Stub process '<model>' is not healthy." (a dead stub, never restarted)
    "unknown model",
    "server is stopping",
    "no available versions",
    "failed to connect",
)
# A request its deadline ended (tritonrag.engine.serving.Deadline): UNAVAILABLE, not the client's mistake.
DEADLINE_MARKERS = ("deadline exceeded",)
INTERNAL_MARKER = "internal error"  # how tritonrag.triton.io.error_response starts an INTERNAL message


def error_from_message(message: str) -> Exception:
    """The typed error behind a Triton error message: Unavailable, InvalidInput, or RuntimeError (INTERNAL)."""
    lowered = message.lower()
    if any(marker in lowered for marker in SHED_LOAD_MARKERS + GOING_AWAY_MARKERS + DEADLINE_MARKERS):
        return Unavailable(message)
    if lowered.startswith(INTERNAL_MARKER):
        return RuntimeError(message)
    return InvalidInput(message)
