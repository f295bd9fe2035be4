"""Corpus loading and chunking."""

from __future__ import annotations

import json

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.retrieval.corpus import Document, chunk, default_corpus, load_folder


def _doc(words: int) -> Document:
    return Document("d", "Title", "src", "  ".join(f"w{i}" for i in range(words)) + "\n")


def test_chunks_overlap_by_the_requested_words_and_cover_the_document():
    chunks = chunk(_doc(100), max_words=30, overlap_words=10)
    words = [c.text.split() for c in chunks]
    assert [len(w) for w in words[:-1]] == [30] * (len(words) - 1)
    for previous, current in zip(words, words[1:]):
        assert previous[-10:] == current[:10]
    assert words[0][0] == "w0" and words[-1][-1] == "w99"
    assert words[-2][-1] != "w99"  # no window lies wholly inside the one before


def test_chunk_text_is_a_slice_of_the_document_at_start():
    doc = Document("d", "t", "s", "alpha  beta\n\ngamma delta epsilon\tzeta eta theta")
    for c in chunk(doc, max_words=3, overlap_words=1):
        assert doc.text[c.start : c.start + len(c.text)] == c.text


def test_chunk_ids_are_deterministic_and_unique():
    first, second = chunk(_doc(200), 40, 8), chunk(_doc(200), 40, 8)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in second]
    assert [c.chunk_id for c in first] == [f"d#{n}" for n in range(len(first))]


def test_short_and_empty_documents():
    assert [c.text for c in chunk(_doc(5), 30, 10)] == ["  ".join(f"w{i}" for i in range(5))]
    assert chunk(Document("e", "", "", "   \n"), 30, 10) == []


@pytest.mark.parametrize("max_words, overlap", [(0, 0), (10, 10), (10, -1)])
def test_bad_chunk_settings_are_rejected(max_words, overlap):
    with pytest.raises(InvalidInput):
        chunk(_doc(10), max_words, overlap)


def test_load_folder_reads_txt_md_and_jsonl(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("intro\n\n## The Heading\n\nbody")
    (tmp_path / "b.txt").write_text("plain text")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"id": "x1", "title": "X", "text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n"
    )
    (tmp_path / "ignored.csv").write_text("a,b")
    docs = {d.doc_id: d for d in load_folder(tmp_path)}
    assert set(docs) == {"sub/a.md", "b.txt", "x1", "c.jsonl:3"}
    assert docs["sub/a.md"].title == "The Heading"
    assert docs["b.txt"].title == "b"
    assert (docs["x1"].title, docs["x1"].text) == ("X", "one")


def test_load_folder_rejects_bad_jsonl(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(InvalidInput, match="bad.jsonl:1"):
        load_folder(tmp_path)


def test_default_corpus_has_every_pydoc_topic_and_module_docstrings():
    from pydoc_data.topics import topics

    docs = default_corpus()
    ids = [d.doc_id for d in docs]
    assert len(ids) == len(set(ids))
    assert {f"topic:{name}" for name in topics} <= set(ids)
    modules = [d for d in docs if d.doc_id.startswith("module:")]
    assert len(modules) >= 40 and all(len(d.text.split()) >= 40 for d in modules)
    assert all(d.title and d.text.strip() for d in docs)
