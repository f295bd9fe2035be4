"""First-stage retrieval: nearest chunks of query embeddings from an index folder."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonrag import paths
from tritonrag.errors import InvalidInput
from tritonrag.retrieval.docstore import DocStore, Passage
from tritonrag.retrieval.index import DOCSTORE_FILE, load_index, to_gpu_if_available

MAX_K = 100


@dataclass(frozen=True)
class Hit:
    """A retrieved passage and its score (cosine similarity, or a reranker's score)."""

    passage: Passage
    score: float


def check_k(k: int) -> int:
    """k as an int in 1..MAX_K, else InvalidInput."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    return int(k)


def _gpu_policy(use_gpu: str | bool) -> str:
    """'auto', 'never' or 'always' from a bool or a config string (true/false/yes/no/1/0 too)."""
    value = str(use_gpu).strip().lower()
    policy = {"true": "always", "yes": "always", "1": "always", "false": "never", "no": "never", "0": "never"}.get(
        value, value
    )
    if policy not in ("auto", "never", "always"):
        raise InvalidInput(f"use_gpu must be auto, never or always, got {use_gpu!r}")
    return policy


class Retriever:
    """Searches an index folder built by build/build_index.py; safe to call from several threads.

    index_dir: the folder (default: paths.index_dir()). use_gpu: "auto" (GPU when faiss can),
    "never" (or False, "false"), "always" (or True, "true"; raises if it cannot).
    """

    def __init__(self, index_dir: str | Path | None = None, use_gpu: str | bool = "auto") -> None:
        use_gpu = _gpu_policy(use_gpu)
        self.folder = Path(index_dir) if index_dir else paths.index_dir()
        index, self.meta = load_index(self.folder)
        self.device = "cpu (use_gpu=never)"
        if use_gpu != "never":
            index, self.device = to_gpu_if_available(index)
        if use_gpu == "always" and not self.device.startswith("gpu"):
            raise RuntimeError(f"use_gpu=always but the index stays on the {self.device}")
        self.index = index
        # CPU FAISS indexes take concurrent searches; GPU resources are not thread-safe.
        self._search_lock = threading.Lock() if self.device.startswith("gpu") else contextlib.nullcontext()
        self.docstore = DocStore(self.folder / DOCSTORE_FILE, readonly=True)
        self.dim = int(self.meta["dim"])

    def search(self, query_embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k hits for each query embedding [B, D], best first (fewer if the index is smaller)."""
        k = check_k(k)
        queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidInput(f"query embeddings must be [B, {self.dim}], got shape {queries.shape}")
        if len(queries) == 0:
            return []
        with self._search_lock:
            scores, ids = self.index.search(queries, k)
        return [self._hits(row_ids, row_scores) for row_ids, row_scores in zip(ids, scores)]

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        keep = ids >= 0  # FAISS pads with -1 when it finds fewer than k
        passages = self.docstore.get(ids[keep].tolist())
        return [Hit(p, float(s)) for p, s in zip(passages, scores[keep])]

    def __len__(self) -> int:
        return int(self.index.ntotal)
