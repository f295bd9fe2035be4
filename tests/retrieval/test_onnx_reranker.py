"""ONNX export of a CrossEncoder: scores match CrossEncoder.predict and the torch scorer, ranking kept, fallback logged.

No trained cross-encoder installs offline, so the checkpoint is built here: the MiniLM encoder
weights with a fresh, seeded one-label head, saved as a sentence-transformers CrossEncoder
directory. Tolerance: scores 1e-5 absolute (sigmoid outputs; measured ~1e-7).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tritonrag.compile.onnx_export import GRAPH_FILE, check, max_abs_diff, stale_reason
from tritonrag.retrieval.docstore import Passage
from tritonrag.retrieval.embedder import default_model_dir
from tritonrag.retrieval.export import SCORE_ATOL, export_cross_encoder
from tritonrag.retrieval.reranker import CrossEncoderScorer, Reranker
from tritonrag.retrieval.retriever import Hit

QUERY = "How do I remove leading and trailing whitespace from a string?"
PASSAGES = [
    "Strings can be split into a list of words with split(), and joined again with join().",
    "A string literal may use single or double quotes; raw strings keep backslashes.",
    "str.strip() returns a copy of the string with leading and trailing whitespace removed.",
    "Lists support append(), insert() and remove() to change their items.",
    "The with statement wraps a block with methods defined by a context manager. " * 60,  # cut at 512 tokens
    "ok",
]
# The ranking test leaves out the 512-token passage: the parity test covers truncation, and it would pad every batch.
HITS = [
    Hit(Passage(i, f"d{i}#0", f"d{i}", "", "test", text), 1.0 - i / 10) for i, text in enumerate(PASSAGES) if i != 4
]


def _save_cross_encoder(folder, seed: int) -> None:
    """MiniLM encoder + a freshly initialised one-label classification head (seeded), as a CrossEncoder directory."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(default_model_dir(), num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cross-encoder")
    _save_cross_encoder(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "reranker"
    return out / GRAPH_FILE, export_cross_encoder(checkpoint, out)


def test_graph_checks_and_meta_records_parity(exported, checkpoint):
    graph, meta = exported
    io = check(graph)
    assert sorted(s["name"] for s in io["inputs"]) == ["attention_mask", "input_ids", "token_type_ids"]
    assert all(s["shape"] == ["batch", "seq"] and s["dtype"] == "int64" for s in io["inputs"])
    assert io["outputs"] == [{"name": "score", "shape": ["batch"], "dtype": "float32"}] == meta["outputs"]
    assert meta["name"] == "reranker" and meta["activation"] == "Sigmoid" and meta["max_length"] == 512
    assert meta["parity"]["max_abs_diff"]["score"] <= meta["parity"]["tolerance"]["score"] == SCORE_ATOL
    assert meta["parity"]["same_order"] is True
    assert stale_reason(graph.parent, checkpoint) is None


def test_onnxruntime_scores_match_cross_encoder_predict(exported, checkpoint):
    from sentence_transformers import CrossEncoder

    graph, _ = exported
    scorer = CrossEncoderScorer(checkpoint, runtime="onnxruntime", onnx_path=graph, batch_size=4)
    assert scorer.runtime_choice.name == "onnxruntime" and not scorer.runtime_choice.fell_back
    pairs = [(QUERY, p) for p in PASSAGES] + [("short", p) for p in PASSAGES[::-1]]
    expected = CrossEncoder(str(checkpoint)).predict(pairs, batch_size=3)
    got = scorer.score_pairs(pairs)
    assert got.shape == (12,) and got.dtype == np.float32
    assert max_abs_diff(got, expected) <= SCORE_ATOL
    assert np.ptp(got) > 100 * SCORE_ATOL  # the seeded head separates the pairs: the ranking below means something


def test_onnxruntime_reranker_ranks_like_torch(exported, checkpoint):
    graph, _ = exported
    torch_reranker = Reranker.from_config(str(checkpoint), runtime="torch")
    ort_reranker = Reranker.from_config(str(checkpoint), runtime="onnxruntime", onnx_path=graph)
    assert (torch_reranker.runtime_choice.name, ort_reranker.runtime_choice.name) == ("torch", "onnxruntime")
    queries = [QUERY, "What does the with statement do?", "list methods"]
    want = torch_reranker.rerank_many(queries, [HITS] * 3, top_n=len(HITS))
    got = ort_reranker.rerank_many(queries, [HITS] * 3, top_n=len(HITS))
    for w, g in zip(want, got):
        assert [h.passage.id for h in g] == [h.passage.id for h in w]
        assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=SCORE_ATOL)


def test_missing_or_foreign_graph_falls_back_to_torch_with_the_reason_logged(exported, checkpoint, tmp_path, caplog):
    graph, _ = exported
    with caplog.at_level(logging.WARNING, logger="tritonrag.retrieval.reranker"):
        missing = CrossEncoderScorer(checkpoint, runtime="onnxruntime", onnx_path=tmp_path / GRAPH_FILE)
    assert missing.runtime_choice.name == "torch" and "does not exist" in missing.runtime_choice.describe()
    assert any(r.name == "tritonrag.retrieval.reranker" and "does not exist" in r.getMessage() for r in caplog.records)

    other = tmp_path / "other-head"
    _save_cross_encoder(other, seed=1)  # same encoder, another head: the graph would score wrongly
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tritonrag.retrieval.reranker"):
        foreign = CrossEncoderScorer(other, runtime="onnxruntime", onnx_path=graph)
    assert foreign.runtime_choice.name == "torch" and "configs differ" in foreign.runtime_choice.describe()
    assert any("configs differ" in r.getMessage() for r in caplog.records)


def test_lexical_reranker_has_no_runtime():
    assert Reranker.from_config(None, runtime="onnxruntime").runtime_choice is None
