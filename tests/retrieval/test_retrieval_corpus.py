"""Corpus loading and chunking."""

from __future__ import annotations

import json

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.retrieval import stdlib_docs
from tritonrag.retrieval.corpus import (
    Document,
    chunk,
    chunk_all,
    chunk_structured,
    default_corpus,
    load_folder,
    paragraphs,
)


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


@pytest.fixture(scope="module")
def stdlib_corpus():
    return default_corpus()


def test_default_corpus_is_every_pydoc_topic_and_the_stdlib_api(stdlib_corpus):
    from pydoc_data.topics import topics

    docs = {d.doc_id: d for d in stdlib_corpus}
    assert len(docs) == len(stdlib_corpus) > 5000
    assert {f"topic:{name}" for name in topics} <= set(docs)
    for name in ("functools.lru_cache", "pathlib.Path.read_text", "os.path.join", "zipfile.ZipFile.extractall"):
        assert name in docs and name in docs[name].title
    assert "Least-recently-used cache decorator" in docs["functools.lru_cache"].text
    # Re-exported objects are documented once, under the name users import them by.
    assert "asyncio.run" in docs and "asyncio.runners.run" not in docs
    assert "threading.Lock" in docs and "multiprocessing.dummy.Lock" not in docs
    assert "os.listdir" in docs and "posix.listdir" not in docs
    assert all(d.title and d.text.strip() for d in stdlib_corpus)


def test_rendering_is_deterministic_and_free_of_memory_addresses():
    names = ["configparser", "logging", "dataclasses"]
    first, second = list(stdlib_docs.render(names)), list(stdlib_docs.render(names))
    assert first == second and len(first) > 100
    assert not any(" at 0x" in e.title or " at 0x" in e.text for e in first)


def test_structured_chunks_fit_the_budget_and_are_slices():
    para = " ".join(f"w{i}" for i in range(30))
    doc = Document("d", "Title here", "src", "\n\n".join([para] * 6) + "\n\n" + " ".join(f"x{i}" for i in range(200)))
    count = lambda text: len(text.split())  # one "word piece" a word
    chunks = chunk_structured(doc, max_tokens=100, count_tokens=count, overlap_words=10)
    for c in chunks:
        assert doc.text[c.start : c.start + len(c.text)] == c.text
        assert count(c.title) + count(c.text) <= 100
    assert [c.chunk_id for c in chunks] == [f"d#{n}" for n in range(len(chunks))]
    assert chunks[0].text.count("w0 ") == 3  # three whole paragraphs packed together
    tail = [c.text.split() for c in chunks if c.text.startswith("x")]
    assert len(tail) == 3 and tail[0][-10:] == tail[1][:10]  # 88-word windows sharing 10 words
    assert tail[-1][-1] == "x199"


def test_a_short_document_is_one_chunk_and_paragraphs_are_found():
    doc = Document("s", "t", "src", "  first para\n  \n\nsecond para  \n")
    assert paragraphs(doc.text) == [(2, 12), (17, 28)]
    assert [c.text for c in chunk_structured(doc)] == ["first para\n  \n\nsecond para"]
    assert chunk_all([doc], chunking="window") == chunk(doc)
    with pytest.raises(InvalidInput):
        chunk_all([doc], chunking="sentences")
