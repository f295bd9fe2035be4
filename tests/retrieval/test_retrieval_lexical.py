"""BM25 over the corpus (bm25s): identifier-aware terms, search, save/load; and the fusion of two rankings."""

from __future__ import annotations

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.retrieval import hybrid
from tritonrag.retrieval.lexical import LexicalIndex, terms

PASSAGES = {
    10: "function functools.lru_cache(maxsize=128, typed=False)\nLeast-recently-used cache decorator.",
    11: "method zipfile.ZipFile.extractall(self, path=None)\nExtract all members from the archive.",
    12: "function shutil.rmtree(path)\nRecursively delete a directory tree.",
    13: "The with statement wraps the execution of a block with methods defined by a context manager.",
}


def test_terms_split_identifiers_and_keep_python_keywords():
    found = terms("How do I use ZipFile.extractall with lru_cache?")
    for expected in ("zipfil", "zip", "file", "extractal", "lru_cach", "lru", "cach", "with"):
        assert expected in found, found
    assert "how" not in found and "do" not in found
    assert terms("caching") == terms("cache") == terms("cached")


@pytest.fixture(scope="module")
def lexical():
    return LexicalIndex.build(list(PASSAGES.values()), list(PASSAGES))


def test_search_ranks_the_passage_naming_the_terms_first(lexical):
    (cache,), (zipped,), (tree,) = (lexical.search([q], 1)[0] for q in ("cache a result", "extractall", "rmtree"))
    assert (cache[0], zipped[0], tree[0]) == (10, 11, 12)
    assert lexical.search(["with statement"], 4)[0][0][0] == 13


def test_no_shared_term_means_no_hit(lexical):
    assert lexical.search(["xylophone quartz"], 5) == [[]]
    assert lexical.search([""], 5) == [[]]


def test_save_and_load_round_trip(tmp_path, lexical):
    lexical.save(tmp_path / "bm25")
    loaded = LexicalIndex.load(tmp_path / "bm25")
    assert len(loaded) == 4
    assert loaded.search(["delete a directory tree"], 2) == lexical.search(["delete a directory tree"], 2)


def test_rrf_and_weighted_fusion():
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    lexical = [(3, 12.0), (4, 8.0)]
    rrf = hybrid.fuse(dense, lexical, 4, "rrf")
    assert rrf[0][0] == 3 and {i for i, _ in rrf} == {1, 2, 3, 4}  # in both lists: first
    heavy = hybrid.fuse(dense, lexical, 2, "wsum", weight=0.9)
    assert [i for i, _ in heavy] == [3, 1]  # min-max: each list's last scores 0 there, like an absent one
    light = hybrid.fuse(dense, lexical, 2, "wsum", weight=0.1)
    assert light[0][0] == 1
    assert hybrid.fuse(dense, [], 2) == dense[:2]  # no lexical hit: dense order
    assert hybrid.fuse(dense, lexical, 2, "bm25") == lexical[:2]
    with pytest.raises(InvalidInput):
        hybrid.fuse(dense, lexical, 2, "max")
