"""Embeddings cached by content: a rebuild embeds only the passages it has not seen.

Embedding the standard library's ~7,800 chunks takes minutes on 2 cores; most rebuilds change
a handful of them (a new interpreter patch release, a chunking tweak), so each vector is kept in
one SQLite file under the SHA-256 of (embedder identity, passage text). A different embedder,
weights file or window gives different keys, so a stale vector can never be returned.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

_SCHEMA = "CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)"
_LOOKUP_BATCH = 500
SLICE = 256  # texts embedded (and stored) at a time  # SQLite's default limit on bound parameters is 999


def cache_key(identity: str, text: str) -> bytes:
    """SHA-256 of the embedder identity and the passage text."""
    return hashlib.sha256(f"{identity}\0{text}".encode()).digest()


class EmbeddingCache:
    """float32 vectors keyed by cache_key, in one SQLite file (created on first use)."""

    def __init__(self, path: str | Path, identity: str, dim: int) -> None:
        self.path, self.identity, self.dim = Path(path), identity, dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path)
        self._conn.execute(_SCHEMA)

    def lookup(self, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """{position in texts: vector} for the texts already cached."""
        keys = [cache_key(self.identity, t) for t in texts]
        where: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            where.setdefault(key, []).append(i)
        found: dict[int, np.ndarray] = {}
        unique = list(where)
        for first in range(0, len(unique), _LOOKUP_BATCH):
            batch = unique[first : first + _LOOKUP_BATCH]
            marks = ",".join("?" * len(batch))
            for key, blob in self._conn.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", batch):
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape == (self.dim,):
                    for i in where[key]:
                        found[i] = vector
        return found

    def store(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Remember vectors [N, dim] for texts."""
        rows = [(cache_key(self.identity, t), np.asarray(v, np.float32).tobytes()) for t, v in zip(texts, vectors)]
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)

    def embed(
        self, texts: Sequence[str], embed: Callable[[list[str]], np.ndarray], progress: bool = False
    ) -> tuple[np.ndarray, int]:
        """(vectors [N, dim] for texts, how many had to be embedded): cached ones reused, the rest embedded.

        The missing texts are embedded longest first in slices of SLICE, each stored as soon as it
        is done, so an interrupted build keeps what it had embedded.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        found = self.lookup(texts)
        for i, vector in found.items():
            out[i] = vector
        missing = sorted((i for i in range(len(texts)) if i not in found), key=lambda i: -len(texts[i]))

        with tqdm(total=len(missing), desc="embedding", unit="chunk", disable=not progress or not missing) as bar:
            for first in range(0, len(missing), SLICE):
                rows = missing[first : first + SLICE]
                fresh = embed([texts[i] for i in rows])
                out[rows] = fresh
                self.store([texts[i] for i in rows], fresh)
                bar.update(len(rows))
        return out, len(missing)

    def close(self) -> None:
        self._conn.close()
