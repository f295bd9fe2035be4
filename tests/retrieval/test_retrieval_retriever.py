"""Retriever over a small index built by build/build_index.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tritonrag.errors import InvalidInput
from tritonrag.retrieval.retriever import Retriever

QUERIES = {
    "How do I stop a loop early?": "python/loops.md",
    "How long should bread dough rise?": "cooking/bread.md",
    "When should I plant tomatoes?": "garden",
    "Where does the airport train leave from?": "notes.jsonl:2",
}


@pytest.fixture(scope="module")
def retriever(small_index):
    return Retriever(small_index, use_gpu="auto")


def test_top_hit_is_the_right_document(retriever, embedder):
    hits = retriever.search(embedder.embed(list(QUERIES)), k=3)
    assert [h[0].passage.doc_id for h in hits] == list(QUERIES.values())
    for row in hits:
        assert len(row) == 3 and row[0].score >= row[1].score >= row[2].score
        assert -1.0 <= row[-1].score <= 1.0 + 1e-6


def test_k_larger_than_the_index_returns_everything(retriever, embedder):
    hits = retriever.search(embedder.embed(["bread"]), k=100)[0]
    assert len(hits) == len(retriever) and len({h.passage.id for h in hits}) == len(retriever)


@pytest.mark.parametrize("k", [0, 101, 2.5, True, "3"])
def test_k_is_validated(retriever, k):
    with pytest.raises(InvalidInput, match="k must be"):
        retriever.search(np.zeros((1, retriever.dim), np.float32), k)


def test_query_shape_is_validated(retriever):
    with pytest.raises(InvalidInput, match="query embeddings"):
        retriever.search(np.zeros((1, 7), np.float32), 3)
    assert retriever.search(np.zeros((0, retriever.dim), np.float32), 3) == []


def test_concurrent_searches_agree(retriever, embedder):
    queries = embedder.embed(list(QUERIES))
    expected = [[h.passage.id for h in row] for row in retriever.search(queries, 5)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: [[h.passage.id for h in r] for r in retriever.search(queries, 5)], range(16)))
    assert all(r == expected for r in results)


@pytest.mark.parametrize("use_gpu", [False, "false", "never", "auto"])
def test_gpu_policy_spellings(small_index, use_gpu):
    assert Retriever(small_index, use_gpu=use_gpu).device.startswith("cpu")


def test_bad_gpu_policy_is_rejected(small_index):
    with pytest.raises(InvalidInput, match="use_gpu"):
        Retriever(small_index, use_gpu="sometimes")


def test_missing_index_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_index.py"):
        Retriever(tmp_path)
