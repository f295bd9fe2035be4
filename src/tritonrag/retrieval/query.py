"""Query preprocessing: decode, normalise and validate what the user typed."""

from __future__ import annotations

import unicodedata

from tritonrag.defaults import DEFAULT_TOP_K, MAX_QUERY_BYTES, MAX_QUERY_CHARS, MAX_TOP_K
from tritonrag.errors import InvalidInput


def normalize_query(raw: bytes | str, max_chars: int = MAX_QUERY_CHARS) -> str:
    """UTF-8 decode, NFC-normalise and collapse whitespace; reject empty or over-long queries."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", errors="replace"))
    if size > MAX_QUERY_BYTES:  # before decoding and normalising, whose cost grows with the text
        raise InvalidInput(f"query is {size} bytes long; the limit is {MAX_QUERY_BYTES}")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"query is not valid UTF-8 (bad byte at position {exc.start})") from exc
    text = " ".join(unicodedata.normalize("NFC", raw).split())
    if not text:
        raise InvalidInput("query is empty or only whitespace")
    if len(text) > max_chars:
        raise InvalidInput(f"query is {len(text)} characters long; the limit is {max_chars}")
    return text


def resolve_top_k(value: int | None) -> int:
    """The number of passages to retrieve; None means the default."""
    if value is None:
        return DEFAULT_TOP_K
    if not 1 <= value <= MAX_TOP_K:
        raise InvalidInput(f"top_k must be between 1 and {MAX_TOP_K}, got {value}")
    return int(value)
