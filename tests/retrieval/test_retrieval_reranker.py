"""Reranker: the offline default (the first-stage order), the lexical candidates, and CrossEncoder checkpoints."""

from __future__ import annotations

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.retrieval.docstore import Passage
from tritonrag.retrieval.reranker import CANDIDATES, DEFAULT, Reranker, bm25, terms
from tritonrag.retrieval.retriever import Hit


def _hit(i: int, text: str, score: float, title: str = "") -> Hit:
    return Hit(Passage(i, f"d{i}#0", f"d{i}", title, "test", text), score)


# Dense scores put a near-miss first; the passage that names the asked-about terms is third.
QUERY = "How do I remove leading and trailing whitespace from a string?"
HITS = [
    _hit(0, "Strings can be split into a list of words with split(), and joined again with join().", 0.62),
    _hit(1, "A string literal may use single or double quotes; raw strings keep backslashes.", 0.60),
    _hit(2, "str.strip() returns a copy of the string with leading and trailing whitespace removed.", 0.58),
    _hit(3, "Lists support append(), insert() and remove() to change their items.", 0.40),
]


def test_default_is_a_measured_candidate():
    assert DEFAULT in CANDIDATES and Reranker.from_config(None).name == DEFAULT
    assert Reranker.from_config("default").name == Reranker.from_config("").name == DEFAULT


def test_bm25_wsum_moves_the_answer_up_and_keeps_a_clear_dense_winner():
    reranker = Reranker.from_config("bm25-wsum")
    out = reranker.rerank(QUERY, HITS, top_n=3)
    assert [h.passage.id for h in out][0] == 2 and len(out) == 3
    assert out[0].score >= out[1].score >= out[2].score
    # When the dense winner is also the lexical winner it stays first.
    clear = [Hit(HITS[2].passage, 0.9), *HITS[:2]]
    assert reranker.rerank(QUERY, clear, top_n=3)[0].passage.id == 2


def test_none_keeps_first_stage_order_and_cuts_to_top_n():
    out = Reranker.from_config("none").rerank(QUERY, HITS, top_n=2)
    assert [h.passage.id for h in out] == [0, 1] and [h.score for h in out] == [0.62, 0.60]


def test_rerank_many_matches_rerank_and_handles_empty_lists():
    reranker = Reranker.from_config(None)
    many = reranker.rerank_many([QUERY, "lists", "nothing"], [HITS, HITS[::-1], []], top_n=4)
    assert many[0] == reranker.rerank(QUERY, HITS, 4)
    assert many[2] == [] and len(many[1]) == 4
    with pytest.raises(InvalidInput):
        reranker.rerank_many([QUERY], [HITS, HITS], 2)
    with pytest.raises(InvalidInput):
        reranker.rerank(QUERY, HITS, 0)


def test_bm25_prefers_passages_with_rare_query_terms():
    assert terms("How do I strip the whitespace?") == ["strip", "whitespace"]
    assert terms("is x in y") == ["is", "x", "in", "y"]  # Python keywords are not stop words
    scores = bm25("strip whitespace", [h.passage.text for h in HITS])
    assert max(range(4), key=scores.__getitem__) == 2 and scores[3] == 0.0


def test_unknown_reranker_is_rejected(tmp_path):
    with pytest.raises(InvalidInput, match="CrossEncoder directory"):
        Reranker.from_config(str(tmp_path / "missing"))


def _tiny_cross_encoder(folder) -> None:
    """A randomly initialised 1-layer BERT sequence classifier with a 40-word vocabulary."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = "the a string whitespace strip remove leading trailing list split join quotes raw how do i from".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz.?()"]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(dict.fromkeys(vocab)),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(folder)


def test_cross_encoder_directory_loads_and_scores(tmp_path):
    from sentence_transformers import CrossEncoder

    _tiny_cross_encoder(tmp_path)
    reranker = Reranker.from_config(str(tmp_path))
    assert reranker.name == f"cross-encoder:{tmp_path.name}"
    out = reranker.rerank(QUERY, HITS, top_n=4)
    expected = CrossEncoder(str(tmp_path)).predict([(QUERY, h.passage.text) for h in HITS])
    assert sorted(h.passage.id for h in out) == [0, 1, 2, 3]
    assert [h.score for h in out] == pytest.approx(sorted(map(float, expected), reverse=True), abs=1e-6)
    batched = reranker.rerank_many([QUERY, QUERY], [HITS, HITS[:2]], top_n=2)
    assert batched[0] == out[:2] and len(batched[1]) == 2
