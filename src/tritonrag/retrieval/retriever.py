"""First-stage retrieval: dense (FAISS) and BM25 nearest chunks fused, from a live index home.

The retriever serves the version its index home's CURRENT pointer names (tritonrag.retrieval.
versions) and, when given a reload interval, polls the pointer on a background thread: a new
version is loaded beside the served one and swapped in with one reference assignment, so a
search runs entirely on the version it started with and no request fails during a swap.

With the query texts, the dense top DEPTH and the BM25 top DEPTH are fused
(tritonrag.retrieval.hybrid); without them (or with fusion="dense") it is dense search only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from tritonrag import paths
from tritonrag.errors import InvalidInput
from tritonrag.retrieval import hybrid, versions
from tritonrag.retrieval.docstore import DocStore, Passage
from tritonrag.retrieval.index import DOCSTORE_FILE, LEXICAL_DIR, load_index, to_gpu_if_available
from tritonrag.retrieval.lexical import LexicalIndex

log = logging.getLogger(__name__)

MAX_K = 100


@dataclass(frozen=True)
class Hit:
    """A retrieved passage and its score (cosine similarity, a fused score, or a reranker's score)."""

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


@dataclass
class Snapshot:
    """One loaded index version: FAISS index, docstore, BM25 (None for an index built without one)."""

    version: str | None
    folder: Path
    index: faiss.Index
    docstore: DocStore
    lexical: LexicalIndex | None
    meta: dict[str, Any]
    device: str
    lock: Any = field(default_factory=contextlib.nullcontext)

    @classmethod
    def load(cls, home: Path, use_gpu: str) -> Snapshot:
        version = versions.pointer(home)
        folder = home / version if version else home
        index, meta = load_index(folder)
        device = "cpu (use_gpu=never)"
        if use_gpu != "never":
            index, device = to_gpu_if_available(index)
        if use_gpu == "always" and not device.startswith("gpu"):
            raise RuntimeError(f"use_gpu=always but the index stays on the {device}")
        lexical = LexicalIndex.load(folder / LEXICAL_DIR) if (folder / LEXICAL_DIR).is_dir() else None
        docstore = DocStore(folder / DOCSTORE_FILE, readonly=True)
        # CPU FAISS indexes take concurrent searches; GPU resources are not thread-safe.
        lock = threading.Lock() if device.startswith("gpu") else contextlib.nullcontext()
        return cls(version, folder, index, docstore, lexical, meta, device, lock)


class Retriever:
    """Searches an index home built by build/build_index.py; safe to call from several threads.

    index_dir: the home (default: paths.index_dir()). use_gpu: "auto" (GPU when faiss can),
    "never" (or False, "false"), "always" (or True, "true"; raises if it cannot). fusion and
    weight: how dense and BM25 combine (hybrid.FUSIONS). reload_interval_s: poll the home's
    CURRENT pointer this often on a background thread (None: never; reload_if_changed() by hand).
    on_swap(message) is told of every swap and failed load (Triton's logger in the model).
    """

    def __init__(
        self,
        index_dir: str | Path | None = None,
        use_gpu: str | bool = "auto",
        fusion: str = hybrid.DEFAULT_FUSION,
        weight: float = hybrid.DEFAULT_WEIGHT,
        reload_interval_s: float | None = None,
        on_swap: Callable[[str], None] | None = None,
    ) -> None:
        if fusion not in hybrid.FUSIONS:
            raise InvalidInput(f"fusion must be one of {hybrid.FUSIONS}, got {fusion!r}")
        self.use_gpu = _gpu_policy(use_gpu)
        self.folder = Path(index_dir) if index_dir else paths.index_dir()
        self.fusion, self.weight = fusion, float(weight)
        self._report = on_swap or log.info
        self._snapshot = Snapshot.load(self.folder, self.use_gpu)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if reload_interval_s:
            self._watcher = threading.Thread(target=self._watch, args=(reload_interval_s,), daemon=True)
            self._watcher.start()

    # The served version's parts, read through the current snapshot.
    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def meta(self) -> dict[str, Any]:
        return self._snapshot.meta

    @property
    def index(self) -> faiss.Index:
        return self._snapshot.index

    @property
    def docstore(self) -> DocStore:
        return self._snapshot.docstore

    @property
    def device(self) -> str:
        return self._snapshot.device

    @property
    def version(self) -> str | None:
        return self._snapshot.version

    @property
    def dim(self) -> int:
        return int(self._snapshot.meta["dim"])

    def search(self, query_embeddings: np.ndarray, k: int, query_texts: list[str] | None = None) -> list[list[Hit]]:
        """Top-k hits for each query embedding [B, D] (fused with BM25 when texts are given), best first."""
        k = check_k(k)
        snap = self._snapshot  # one version for the whole call, whatever a reload does meanwhile
        queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != int(snap.meta["dim"]):
            raise InvalidInput(f"query embeddings must be [B, {snap.meta['dim']}], got shape {queries.shape}")
        if query_texts is not None and len(query_texts) != len(queries):
            raise InvalidInput(f"{len(query_texts)} query texts for {len(queries)} embeddings")
        if len(queries) == 0:
            return []
        hybrid_on = query_texts is not None and snap.lexical is not None and self.fusion != "dense"
        depth = min(max(k, hybrid.DEPTH), MAX_K) if hybrid_on else k
        with snap.lock:
            scores, ids = snap.index.search(queries, depth)
        dense = [[(int(i), float(s)) for i, s in zip(row_ids, row) if i >= 0] for row_ids, row in zip(ids, scores)]
        if hybrid_on:
            lexical = snap.lexical.search(query_texts, depth)
            ranked = [hybrid.fuse(d, lx, k, self.fusion, self.weight) for d, lx in zip(dense, lexical)]
        else:
            ranked = [d[:k] for d in dense]
        return [self._hits(snap, row) for row in ranked]

    @staticmethod
    def _hits(snap: Snapshot, ranked: list[tuple[int, float]]) -> list[Hit]:
        passages = snap.docstore.get([i for i, _ in ranked])
        return [Hit(p, s) for p, (_, s) in zip(passages, ranked)]

    def reload_if_changed(self) -> bool:
        """Load and swap in the version CURRENT names if it is not the served one; True when swapped."""
        with self._reload_lock:
            if versions.pointer(self.folder) == self._snapshot.version:
                return False
            fresh = Snapshot.load(self.folder, self.use_gpu)
            old, self._snapshot = self._snapshot, fresh
            self._report(f"retriever: now serving {fresh.version} ({fresh.index.ntotal} chunks), was {old.version}")
            return True

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reload_if_changed()
            except Exception as exc:  # noqa: BLE001 - a bad new version must not stop serving the current one
                self._report(f"retriever: could not load the new index version ({exc!r}); still serving {self.version}")

    def close(self) -> None:
        """Stop the reload thread (searches keep working on the served version)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def __len__(self) -> int:
        return int(self._snapshot.index.ntotal)
