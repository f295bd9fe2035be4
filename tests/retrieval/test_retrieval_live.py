"""Live index changes: versions behind an atomic pointer, add and delete, and a retriever swapping under load."""

from __future__ import annotations

import shutil
import threading

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.retrieval import builder, versions
from tritonrag.retrieval.corpus import Document
from tritonrag.retrieval.docstore import DocStore
from tritonrag.retrieval.retriever import Retriever

MOON = Document("moon.txt", "The Moon", "test", "The Moon orbits the Earth about once every twenty-seven days.")
QUESTION = "How long does the Moon take to orbit the Earth?"


@pytest.fixture()
def home(tmp_path, small_index):
    target = tmp_path / "home"
    shutil.copytree(small_index, target, symlinks=True)
    return target


def test_publish_replaces_the_pointer_and_keeps_the_newest_versions(tmp_path):
    home = tmp_path / "h"
    for n in range(5):
        built = versions.staging(home)
        (built / "marker").write_text(str(n))
        versions.publish(home, built)
    assert versions.pointer(home) == "v000005"
    assert versions.versions(home) == ["v000003", "v000004", "v000005"]
    assert (versions.current(home) / "marker").read_text() == "4"
    assert not list(home.glob(".staging-*")) and not list(home.glob(".CURRENT.*"))


def test_plain_layout_paths_follow_the_current_version(home, embedder):
    """Readers of home/docstore.sqlite (the layout before versions) see the served version."""
    for name in versions.LINKS:
        assert (home / name).resolve() == (versions.current(home) / name).resolve()
    builder.add_documents(home, [MOON], embedder)
    assert (home / "faiss.index").resolve().parent.name == versions.pointer(home) == "v000002"
    assert "moon.txt" in DocStore(home / "docstore.sqlite", readonly=True).doc_ids()


def test_a_folder_without_pointer_is_served_as_is(tmp_path):
    assert versions.current(tmp_path) == tmp_path and versions.pointer(tmp_path) is None


def test_add_then_delete_a_document(home, embedder):
    retriever = Retriever(home, use_gpu="never")
    before = len(retriever)
    meta = builder.add_documents(home, [MOON], embedder)
    assert meta["documents"] == 6 and meta["count"] == before + 1
    assert retriever.reload_if_changed() and not retriever.reload_if_changed()
    top = retriever.search(embedder.embed([QUESTION]), 1, [QUESTION])[0][0]
    assert top.passage.doc_id == "moon.txt"
    assert builder.add_documents(home, [MOON], embedder) == {}  # already there: skipped
    garden_chunks = len(retriever.docstore.passages_of("garden"))
    meta = builder.delete_documents(home, ["moon.txt", "garden"])
    assert meta["documents"] == 4 and meta["count"] == before - garden_chunks
    retriever.reload_if_changed()
    found = {h.passage.doc_id for h in retriever.search(embedder.embed([QUESTION]), 100, [QUESTION])[0]}
    assert "moon.txt" not in found and "garden" not in found and "cooking/bread.md" in found


def test_replace_reindexes_a_changed_document(home, embedder):
    builder.add_documents(home, [MOON], embedder)
    changed = Document("moon.txt", "The Moon", "test", "The Moon is about 384,000 kilometres away from the Earth.")
    meta = builder.add_documents(home, [changed], embedder, replace=True)
    assert meta["documents"] == 6
    retriever = Retriever(home, use_gpu="never")
    texts = [p.text for p in retriever.docstore.passages_of("moon.txt")]
    assert texts == [changed.text]


def test_deleting_an_unknown_document_is_refused(home):
    with pytest.raises(InvalidInput, match="not in the index"):
        builder.delete_documents(home, ["no-such-doc"])


def test_the_content_digest_after_add_and_delete_matches_a_fresh_build(home, embedder):
    original = builder.current_meta(home)["content_digest"]
    builder.add_documents(home, [MOON], embedder)
    assert builder.current_meta(home)["content_digest"] != original
    builder.delete_documents(home, ["moon.txt"])
    assert builder.current_meta(home)["content_digest"] == original


def test_searches_never_fail_while_versions_change(home, embedder):
    """Four threads search without pause while a document is added and deleted; the watcher swaps versions."""
    retriever = Retriever(home, use_gpu="never", reload_interval_s=0.05)
    query = embedder.embed([QUESTION])
    stop, errors, seen = threading.Event(), [], set()

    def search_forever():
        while not stop.is_set():
            try:
                hits = retriever.search(query, 3, [QUESTION])[0]
                seen.add((retriever.version, hits[0].passage.doc_id))
            except Exception as exc:  # noqa: BLE001 - the assertion below reports it
                errors.append(exc)

    threads = [threading.Thread(target=search_forever) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        builder.add_documents(home, [MOON], embedder)
        _wait_for(lambda: retriever.version == versions.pointer(home))
        builder.delete_documents(home, ["moon.txt"])
        _wait_for(lambda: retriever.version == versions.pointer(home))
    finally:
        stop.set()
        for t in threads:
            t.join()
        retriever.close()
    assert not errors, errors[:3]
    assert ("v000002", "moon.txt") in seen  # the added document was found while it was there
    assert retriever.search(query, 3, [QUESTION])[0][0].passage.doc_id != "moon.txt"


def _wait_for(condition, timeout: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError("the retriever did not switch to the new version in time")
