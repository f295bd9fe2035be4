"""The router's private abort channel to the generator: only a holder of the server's key may abort.

The generator's optional `abort_request_id` input ends a running request by name. Triton 2.51's
Python backend cannot cancel a BLS request, so the `llm` router uses that input when its caller
cancels; but the input is reachable by any client that calls `generator` directly. So an abort
carries a key: `TRITONRAG_ABORT_KEY`, a random secret TritonServer puts in tritonserver's
environment at every start (the model stubs inherit it; clients never see it). The value sent is
`<key>:<JSON list of request ids>` (the router sends one abort per tick for every request cancelled
since the last); a wrong or missing key is INVALID_ARG and aborts nothing. Without the variable
(tritonserver started by hand), no abort is accepted, and cancelled routed requests run to their end.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets

from tritonrag.errors import InvalidInput

ABORT_KEY_ENV = "TRITONRAG_ABORT_KEY"


def new_key() -> str:
    return secrets.token_hex(16)


def server_key() -> str | None:
    return os.environ.get(ABORT_KEY_ENV) or None


def abort_value(request_id: str, key: str | None = None) -> str:
    """What the router sends as `abort_request_id` to end `request_id`."""
    return f"{key if key is not None else server_key() or ''}:{request_id}"


def aborted_id(value: str, key: str | None = None) -> str:
    """The request id an abort names, if it carries the server's key; else InvalidInput."""
    key = key if key is not None else server_key()
    given, sep, request_id = value.partition(":")
    if not key or not sep or not hmac.compare_digest(given.encode(), key.encode()):
        raise InvalidInput("abort_request_id is reserved for the server's own router")
    if not request_id:
        raise InvalidInput("abort_request_id names no request")
    return request_id


def aborted_ids(value: str, key: str | None = None) -> list[str]:
    """The request ids a keyed abort names: `<key>:<JSON list of ids>` (or one plain id)."""
    named = aborted_id(value, key)
    if not named.startswith("["):
        return [named]
    try:
        ids = json.loads(named)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidInput("abort_request_id: the id list is not JSON") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise InvalidInput("abort_request_id: the id list must hold non-empty strings")
    return ids
