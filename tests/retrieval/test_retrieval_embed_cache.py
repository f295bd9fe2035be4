"""The embedding cache: reused by content, keyed by embedder identity, survives a reopen."""

from __future__ import annotations

import numpy as np

from tritonrag.retrieval.embed_cache import EmbeddingCache


class Counting:
    """A stand-in embedding function that records what it was asked to embed."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, texts):
        self.asked += texts
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_only_unseen_texts_are_embedded_and_vectors_come_back_in_order(tmp_path):
    embed = Counting()
    cache = EmbeddingCache(tmp_path / "c.sqlite", "model-a", 3)
    first, n = cache.embed(["aa", "b", "cccc"], embed)
    assert n == 3 and first[:, 0].tolist() == [2, 1, 4]
    second, n = cache.embed(["cccc", "dd", "aa"], embed)
    assert n == 1 and sorted(embed.asked) == ["aa", "b", "cccc", "dd"]
    assert second[:, 0].tolist() == [4, 2, 2]
    cache.close()
    again = EmbeddingCache(tmp_path / "c.sqlite", "model-a", 3)
    assert again.embed(["b"], embed)[1] == 0  # persisted


def test_another_embedder_identity_misses(tmp_path):
    embed = Counting()
    EmbeddingCache(tmp_path / "c.sqlite", "model-a", 3).embed(["x"], embed)
    _, n = EmbeddingCache(tmp_path / "c.sqlite", "model-b", 3).embed(["x"], embed)
    assert n == 1
