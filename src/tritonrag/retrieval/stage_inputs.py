"""Per-request checks for the batched retrieval stages (embedder, reranker, retriever).

A dynamic batch mixes requests from many clients; the stages are internal but reachable, so
each request is checked on its own and a bad one gets its own INVALID_ARG (naming the input)
instead of failing the whole batch it was queued with.
"""

from __future__ import annotations

import json

import numpy as np

from tritonrag.errors import InvalidInput
from tritonrag.retrieval.passages import hits_from_json
from tritonrag.retrieval.query import resolve_top_k

MAX_CANDIDATES_BYTES = 1 << 20  # a reranker request's candidate list (20 passages are ~30 KB)


def token_row(input_ids: np.ndarray, attention_mask: np.ndarray, vocab_size: int, max_len: int):
    """One query's token ids and mask as flat int64 rows, checked against the embedder's vocabulary."""
    ids, mask = input_ids.reshape(-1), attention_mask.reshape(-1)
    if ids.size == 0 or ids.size != mask.size:
        raise InvalidInput(
            f"input_ids ({ids.size}) and attention_mask ({mask.size}) must be non-empty and equal in length"
        )
    if ids.size > max_len:
        raise InvalidInput(f"input_ids holds {ids.size} tokens; the embedder takes at most {max_len}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise InvalidInput(f"input_ids must be token ids in [0, {vocab_size})")
    if not np.isin(mask, (0, 1)).all():
        raise InvalidInput("attention_mask must hold only 0 and 1")
    return ids.astype(np.int64), mask.astype(np.int64)


def candidates(raw: str):
    """The reranker's `candidates` JSON (the retriever's hits) as Hit objects."""
    if len(raw) > MAX_CANDIDATES_BYTES:
        raise InvalidInput(f"candidates is {len(raw)} characters long; the limit is {MAX_CANDIDATES_BYTES}")
    try:
        return hits_from_json(raw)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidInput("candidates is not a JSON list of passages") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"candidates: each item needs the passage fields and a score ({exc!r})") from None


def top_k(value) -> int:
    """A stage's `top_k` input: required here, in the same range as the public one."""
    if value is None:
        raise InvalidInput("input 'top_k' is required")
    return resolve_top_k(int(value))
