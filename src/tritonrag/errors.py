"""Errors the library raises; Triton adapters map them to Triton error codes."""


class InvalidInput(ValueError):
    """The request itself is wrong (maps to INVALID_ARG); the server keeps serving."""


class Unavailable(RuntimeError):
    """The request is valid but cannot be taken now, e.g. a full waiting queue (maps to UNAVAILABLE)."""
