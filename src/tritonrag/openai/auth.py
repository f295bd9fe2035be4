"""API keys: when any are configured, every API route needs `Authorization: Bearer <key>`.

Keys come from `--api-key` or the environment variable TRITONRAG_API_KEYS (comma-separated). The web
page and its static files are served without a key (they hold none); the page asks for the key
and sends it with its API calls.
"""

from __future__ import annotations

import hmac
import os

from fastapi import Request

from tritonrag.openai.errors import unauthorized
from tritonrag.openai.service import service_of

ENV_KEYS = "TRITONRAG_API_KEYS"


def keys_from_env() -> tuple[str, ...]:
    return tuple(key.strip() for key in os.environ.get(ENV_KEYS, "").split(",") if key.strip())


async def require_key(request: Request) -> None:
    """A FastAPI dependency: 401 in OpenAI's shape unless the request carries a configured key."""
    keys = service_of(request).settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("Missing API key: send the header 'Authorization: Bearer <key>'")
    if not any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys):
        raise unauthorized("Incorrect API key provided")
