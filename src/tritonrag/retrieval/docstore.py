"""SQLite store of chunk texts keyed by the integer id the FAISS index returns."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonrag.retrieval.corpus import Chunk

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL
)
"""
_COLUMNS = "id, chunk_id, doc_id, title, source, text"


@dataclass(frozen=True)
class Passage:
    """A stored chunk as the retriever hands it out; `id` is its FAISS id."""

    id: int
    chunk_id: str
    doc_id: str
    title: str
    source: str
    text: str


class DocStore:
    """Chunks in one SQLite file; ids are 0, 1, 2, ... in insertion order.

    Each thread gets its own connection, so a Triton model may read from several threads;
    writes are serialised by a lock. `readonly=True` opens the file read-only (it must exist).
    """

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise FileNotFoundError(f"docstore {self.path} does not exist")
        self._local = threading.local()
        self._write_lock = threading.Lock()
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connection() as conn:
                conn.execute(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            uri = self.path.resolve().as_uri() + ("?mode=ro" if self.readonly else "")
            conn = sqlite3.connect(uri, uri=True)
            self._local.conn = conn
        return conn

    def add(self, chunks: Iterable[Chunk]) -> list[int]:
        """Append chunks; returns their new ids. A chunk_id already stored raises ValueError."""
        rows = list(chunks)
        with self._write_lock, self._connection() as conn:
            first = conn.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM chunks").fetchone()[0]
            ids = list(range(first, first + len(rows)))
            try:
                conn.executemany(
                    "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(i, c.chunk_id, c.doc_id, c.title, c.source, c.text, c.start) for i, c in zip(ids, rows)],
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"duplicate chunk id in {self.path}: {exc}") from exc
        return ids

    def get(self, ids: Sequence[int]) -> list[Passage]:
        """Passages for ids, in the order asked (repeats allowed); an unknown id raises KeyError."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        marks = ",".join("?" * len(set(wanted)))
        rows = (
            self._connection()
            .execute(f"SELECT {_COLUMNS} FROM chunks WHERE id IN ({marks})", sorted(set(wanted)))
            .fetchall()
        )
        found = {row[0]: Passage(*row) for row in rows}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"ids not in docstore {self.path}: {missing[:10]}")
        return [found[i] for i in wanted]

    def count(self) -> int:
        """Number of stored chunks."""
        return self._connection().execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def chunk_ids(self) -> set[str]:
        """All stored chunk ids (used by --append to skip chunks already indexed)."""
        return {row[0] for row in self._connection().execute("SELECT chunk_id FROM chunks")}

    def passages_of(self, doc_id: str) -> list[Passage]:
        """Every stored chunk of one document, in id order."""
        rows = (
            self._connection()
            .execute(f"SELECT {_COLUMNS} FROM chunks WHERE doc_id = ? ORDER BY id", (doc_id,))
            .fetchall()
        )
        return [Passage(*row) for row in rows]

    def chunks_of(self, doc_ids: Iterable[str]) -> list[tuple[int, Chunk]]:
        """(id, Chunk) of every stored chunk of the given documents, in id order."""
        wanted = sorted(set(doc_ids))
        rows = []
        for first in range(0, len(wanted), 500):
            batch = wanted[first : first + 500]
            marks = ",".join("?" * len(batch))
            rows += (
                self._connection()
                .execute(
                    f"SELECT id, chunk_id, doc_id, title, source, text, start FROM chunks WHERE doc_id IN ({marks})",
                    batch,
                )
                .fetchall()
            )
        return [(row[0], Chunk(*row[1:])) for row in sorted(rows)]

    def delete_docs(self, doc_ids: Iterable[str]) -> list[int]:
        """Remove every chunk of the given documents; returns the removed ids."""
        ids = [i for i, _ in self.chunks_of(doc_ids)]
        with self._write_lock, self._connection() as conn:
            conn.executemany("DELETE FROM chunks WHERE id = ?", [(i,) for i in ids])
        return ids

    def all_passages(self) -> list[Passage]:
        """Every stored chunk, in id order (the lexical index is rebuilt from these)."""
        return [Passage(*row) for row in self._connection().execute(f"SELECT {_COLUMNS} FROM chunks ORDER BY id")]

    def doc_ids(self) -> set[str]:
        """All stored document ids."""
        return {row[0] for row in self._connection().execute("SELECT DISTINCT doc_id FROM chunks")}

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when collected)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
