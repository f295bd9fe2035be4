"""build/build_index.py and the builder: meta.json, versions, up-to-date check, cache, --append, --kind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tritonrag.retrieval import builder, versions
from tritonrag.retrieval.corpus import Chunk
from tritonrag.retrieval.docstore import DocStore
from tritonrag.retrieval.index import load_index
from tritonrag.retrieval.lexical import LexicalIndex

REPO = Path(__file__).resolve().parents[2]


def test_meta_describes_the_build(small_index):
    meta = builder.current_meta(small_index)
    served = versions.current(small_index)
    assert versions.pointer(small_index) == served.name == "v000001"
    assert meta["kind"] == "flat" and meta["index"] == {"kind": "flat"} and meta["format"] == builder.FORMAT
    assert meta["dim"] == 384 and meta["embedder"] == "all-MiniLM-L6-v2"
    assert (meta["chunking"], meta["chunk_words"], meta["overlap_words"]) == ("window", 24, 6)
    assert meta["documents"] == 5 and meta["count"] == DocStore(served / "docstore.sqlite").count()
    assert meta["embedded"] == meta["count"]  # a fresh cache: every chunk embedded once
    assert len(LexicalIndex.load(served / "bm25")) == meta["count"]
    assert len(meta["fingerprint"]) == 64


def test_second_run_is_up_to_date(small_index, docs_folder, build_script, embedder, capsys):
    args = build_script.parse_args(
        ["--docs", str(docs_folder), "--out", str(small_index), "--chunking", "window", "--chunk-words", "24"]
        + ["--overlap-words", "6"]
    )
    assert build_script.run(args, embedder=embedder) == {}
    assert "up to date" in capsys.readouterr().out


def test_forced_rebuild_embeds_nothing_new_and_publishes_a_new_version(
    tmp_path, small_index, docs_folder, build_script, embedder
):
    home = tmp_path / "home"
    shutil.copytree(small_index, home, symlinks=True)
    args = build_script.parse_args(
        ["--docs", str(docs_folder), "--out", str(home), "--chunking", "window", "--chunk-words", "24"]
        + ["--overlap-words", "6", "--force"]
    )
    meta = build_script.run(args, embedder=embedder)
    assert meta["embedded"] == 0 and meta["count"] > 0  # every vector came from the cache
    assert versions.pointer(home) == "v000002" and versions.versions(home) == ["v000001", "v000002"]


def test_append_adds_only_new_documents(tmp_path, small_index, docs_folder, build_script, embedder):
    out = tmp_path / "index"
    shutil.copytree(small_index, out, symlinks=True)
    before = builder.current_meta(out)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "moon.txt").write_text("The Moon orbits the Earth about once every twenty-seven days.")
    args = build_script.parse_args(["--docs", str(docs_folder), "--docs", str(extra), "--out", str(out), "--append"])
    meta = build_script.run(args, embedder=embedder)
    assert meta["documents"] == before["documents"] + 1 and meta["count"] == before["count"] + 1
    index, _ = load_index(versions.current(out))
    assert index.ntotal == meta["count"]
    query = embedder.embed(["How long does the Moon take to orbit the Earth?"])
    _, ids = index.search(query, 1)
    assert DocStore(versions.current(out) / "docstore.sqlite").get(ids[0].tolist())[0].doc_id == "moon.txt"
    assert build_script.run(args, embedder=embedder) == {}  # nothing new the second time


def test_digest_ignores_chunk_order_and_deletes_undo_adds():
    chunks = [Chunk(f"d#{i}", "d", "t", "s", f"text {i}", i) for i in range(5)]
    settings = {"kind": "flat"}
    forward = builder.fingerprint(settings, builder.chunk_digest(chunks))
    assert forward == builder.fingerprint(settings, builder.chunk_digest(chunks[::-1]))
    assert forward == builder.fingerprint(settings, builder.chunk_digest(chunks[3:], builder.chunk_digest(chunks[:3])))
    assert forward != builder.fingerprint({"kind": "ivf"}, builder.chunk_digest(chunks))
    assert builder.chunk_digest(chunks[3:], builder.chunk_digest(chunks), sign=-1) == builder.chunk_digest(chunks[:3])


def test_hnsw_build_reports_recall(tmp_path, docs_folder, build_script, embedder):
    out = tmp_path / "hnsw"
    args = build_script.parse_args(
        ["--docs", str(docs_folder), "--out", str(out), "--kind", "hnsw", "--chunking", "window"]
        + ["--chunk-words", "12", "--overlap-words", "2"]
    )
    meta = build_script.run(args, embedder=embedder)
    assert meta["index"]["kind"] == "hnsw" and 0.9 <= meta["recall_at_10"] <= 1.0


def test_script_runs_standalone_and_explains_a_bad_append(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "build" / "build_index.py"), "--append", "--out", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "--append: no index" in result.stderr
