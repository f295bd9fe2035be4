"""Query normalisation and validation."""

import pytest

from tritonrag.defaults import DEFAULT_TOP_K, MAX_QUERY_CHARS, MAX_TOP_K
from tritonrag.errors import InvalidInput
from tritonrag.retrieval.query import normalize_query, resolve_top_k


def test_whitespace_collapsed_and_nfc():
    assert normalize_query(b"  what  is\n a\tlist? ") == "what is a list?"
    assert normalize_query("cafe\u0301") == "caf\u00e9"


@pytest.mark.parametrize("raw", [b"", b"   ", "\n\t "])
def test_empty_rejected(raw):
    with pytest.raises(InvalidInput, match="empty"):
        normalize_query(raw)


def test_non_utf8_rejected_with_position():
    with pytest.raises(InvalidInput, match="not valid UTF-8.*position 3"):
        normalize_query(b"abc\xff")


def test_length_limit():
    assert normalize_query("a" * MAX_QUERY_CHARS)
    with pytest.raises(InvalidInput, match=f"limit is {MAX_QUERY_CHARS}"):
        normalize_query("a" * (MAX_QUERY_CHARS + 1))


def test_top_k():
    assert resolve_top_k(None) == DEFAULT_TOP_K
    assert resolve_top_k(MAX_TOP_K) == MAX_TOP_K
    for bad in (0, -1, MAX_TOP_K + 1):
        with pytest.raises(InvalidInput, match="top_k must be between"):
            resolve_top_k(bad)
