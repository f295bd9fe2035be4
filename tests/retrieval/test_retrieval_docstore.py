"""SQLite docstore: ids, order, read-only use from several threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tritonrag.retrieval.corpus import Chunk
from tritonrag.retrieval.docstore import DocStore, Passage


def _chunks(prefix: str, n: int) -> list[Chunk]:
    return [
        Chunk(f"{prefix}#{i}", prefix, f"T{prefix}", f"src/{prefix}", f"text {prefix} {i}", i * 10) for i in range(n)
    ]


def test_round_trip_in_the_order_asked(tmp_path):
    store = DocStore(tmp_path / "d.sqlite")
    assert store.add(_chunks("a", 3)) == [0, 1, 2]
    assert store.add(_chunks("b", 2)) == [3, 4]
    assert store.count() == 5
    got = store.get([4, 0, 4, 2])
    assert [p.id for p in got] == [4, 0, 4, 2]
    assert got[1] == Passage(0, "a#0", "a", "Ta", "src/a", "text a 0")
    assert store.get([]) == []
    assert store.doc_ids() == {"a", "b"}
    assert [p.chunk_id for p in store.passages_of("b")] == ["b#0", "b#1"]


def test_unknown_ids_and_duplicate_chunks_raise(tmp_path):
    store = DocStore(tmp_path / "d.sqlite")
    store.add(_chunks("a", 2))
    with pytest.raises(KeyError):
        store.get([0, 7])
    with pytest.raises(ValueError, match="duplicate"):
        store.add(_chunks("a", 1))
    assert store.count() == 2  # the failed insert left nothing behind


def test_readonly_store_reads_from_many_threads(tmp_path):
    path = tmp_path / "d.sqlite"
    DocStore(path).add(_chunks("a", 50))
    reader = DocStore(path, readonly=True)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: reader.get([i, 49 - i])[0].chunk_id, range(50)))
    assert results == [f"a#{i}" for i in range(50)]
    with pytest.raises(FileNotFoundError):
        DocStore(tmp_path / "missing.sqlite", readonly=True)
