"""Embedder: tokenizer output contract and parity with SentenceTransformer.encode."""

from __future__ import annotations

import numpy as np
import pytest

from tritonrag.errors import InvalidInput

TEXTS = [
    "How do I write a conditional expression in Python?",
    "short",
    "The with statement wraps a block with methods defined by a context manager. " * 30,  # > 256 tokens
]


def test_tokenize_pads_to_longest_and_truncates(embedder):
    tokens = embedder.tokenize(TEXTS)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (3, embedder.max_seq_length)
    assert mask[1].sum() < mask[0].sum() < embedder.max_seq_length == mask[2].sum()
    assert embedder.tokenize(TEXTS[:2])["input_ids"].shape[1] == mask[0].sum()


def test_embeddings_match_sentence_transformers(embedder):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedder.model_dir), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    tokens = embedder.tokenize(TEXTS)
    got = embedder.embed_tokens(tokens["input_ids"], tokens["attention_mask"])
    assert got.dtype == np.float32 and got.shape == (3, embedder.dim) == (3, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(TEXTS, batch_size=2), expected, atol=1e-5)


def test_bad_inputs_are_rejected(embedder):
    with pytest.raises(InvalidInput):
        embedder.tokenize("not a list")
    with pytest.raises(InvalidInput):
        embedder.embed_tokens(np.zeros((2, 3), np.int64), np.zeros((2, 4), np.int64))
