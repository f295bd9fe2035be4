"""The labelled eval set, the relevance rule, the metrics, and quality on the default index."""

from __future__ import annotations

import os

import pytest

from tritonrag.paths import index_dir
from tritonrag.retrieval import evaluate
from tritonrag.retrieval.corpus import Chunk, default_corpus
from tritonrag.retrieval.docstore import DocStore
from tritonrag.retrieval.index import read_meta


def test_eval_set_is_large_and_labels_real_documents():
    questions = evaluate.load_questions()
    assert len(questions) >= 60
    assert len({q.question for q in questions}) == len(questions)
    ids = {d.doc_id for d in default_corpus()}
    assert {q.doc_id for q in questions} <= ids
    assert all(q.question.endswith("?") for q in questions)


def test_relevance_counts_verbatim_copies_only_in_the_right_direction(tmp_path):
    section = " ".join(f"small{i}" for i in range(40))
    other = " ".join(f"other{i}" for i in range(40))
    store = DocStore(tmp_path / "d.sqlite")
    ids = store.add(
        [
            Chunk("small#0", "small", "", "", section, 0),
            Chunk("big#0", "big", "", "", section, 0),
            Chunk("big#1", "big", "", "", other, 0),
        ]
    )
    small, big_copy, big_other = store.get(ids)
    rel = evaluate.Relevance(store)
    assert rel.is_hit(small, "small") and rel.is_hit(big_copy, "small")
    assert not rel.is_hit(big_other, "small")
    assert not rel.is_hit(small, "big")  # small does not contain all of big
    assert not evaluate.Relevance(store, strict=True).is_hit(big_copy, "small")


def test_metrics():
    m = evaluate.metrics([1, 3, None, 12], [1, 3, 10])
    assert m == {"recall@1": 0.25, "recall@3": 0.5, "recall@10": 0.5, "mrr@10": pytest.approx((1 + 1 / 3) / 4)}


@pytest.fixture(scope="module")
def default_index(tmp_path_factory, build_script, embedder):
    """The default-corpus index: built here when TRITONRAG_SLOW=1 (about 75 s), else artifacts/index."""
    if os.environ.get("TRITONRAG_SLOW") == "1":
        out = tmp_path_factory.mktemp("default") / "index"
        build_script.run(build_script.parse_args(["--out", str(out)]), embedder=embedder)
        return out
    folder = index_dir()
    try:
        meta = read_meta(folder)
    except FileNotFoundError:
        pytest.skip(
            f"no index at {folder}: building the default corpus takes 30-75 s on 2 cores, too slow for "
            "this suite; run `python build/build_index.py` or set TRITONRAG_SLOW=1"
        )
    if not any(i.startswith("default-corpus") for i in meta.get("inputs", [])):
        pytest.skip(f"{folder} was not built from the default corpus")
    return folder


def test_default_index_quality_and_reranker_does_not_hurt(default_index):
    results = evaluate.run(default_index, ["default"], [1, 5, 10], 30, False, evaluate.load_questions())
    first, reranked = results["first stage"], next(v for k, v in results.items() if k.startswith("rerank"))
    assert first["recall@10"] >= 0.9 and first["mrr@10"] >= 0.75
    assert reranked["mrr@10"] >= first["mrr@10"]
    assert reranked["recall@5"] >= first["recall@5"] and reranked["recall@10"] >= first["recall@10"]
