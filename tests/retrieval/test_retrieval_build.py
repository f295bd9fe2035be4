"""build/build_index.py: meta.json, up-to-date check, --append, --kind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tritonrag.retrieval.corpus import Chunk
from tritonrag.retrieval.docstore import DocStore
from tritonrag.retrieval.index import load_index

REPO = Path(__file__).resolve().parents[2]


def test_meta_describes_the_build(small_index):
    meta = json.loads((small_index / "meta.json").read_text())
    assert meta["kind"] == "flat" and meta["index"] == {"kind": "flat"}
    assert meta["dim"] == 384 and meta["embedder"] == "all-MiniLM-L6-v2"
    assert (meta["chunk_words"], meta["overlap_words"]) == (24, 6)
    assert meta["documents"] == 5 and meta["count"] == DocStore(small_index / "docstore.sqlite").count()
    assert len(meta["fingerprint"]) == 64


def test_second_run_is_up_to_date(small_index, docs_folder, build_script, embedder, capsys):
    args = build_script.parse_args(
        ["--docs", str(docs_folder), "--out", str(small_index), "--chunk-words", "24", "--overlap-words", "6"]
    )
    assert build_script.run(args, embedder=embedder) == {}
    assert "up to date" in capsys.readouterr().out


def test_append_adds_only_new_documents(tmp_path, small_index, docs_folder, build_script, embedder):
    out = tmp_path / "index"
    shutil.copytree(small_index, out)
    before = json.loads((out / "meta.json").read_text())
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "moon.txt").write_text("The Moon orbits the Earth about once every twenty-seven days.")
    args = build_script.parse_args(["--docs", str(docs_folder), "--docs", str(extra), "--out", str(out), "--append"])
    meta = build_script.run(args, embedder=embedder)
    assert meta["documents"] == before["documents"] + 1 and meta["count"] == before["count"] + 1
    index, _ = load_index(out)
    assert index.ntotal == meta["count"]
    query = embedder.embed(["How long does the Moon take to orbit the Earth?"])
    _, ids = index.search(query, 1)
    assert DocStore(out / "docstore.sqlite").get(ids[0].tolist())[0].doc_id == "moon.txt"
    assert build_script.run(args, embedder=embedder) == {}  # nothing new the second time


def test_fingerprint_ignores_chunk_order(build_script):
    build = build_script
    chunks = [Chunk(f"d#{i}", "d", "t", "s", f"text {i}", i) for i in range(5)]
    settings = {"kind": "flat"}
    forward = build.fingerprint(settings, build.content_digest(chunks))
    assert forward == build.fingerprint(settings, build.content_digest(chunks[::-1]))
    assert forward == build.fingerprint(settings, build.content_digest(chunks[3:], build.content_digest(chunks[:3])))
    assert forward != build.fingerprint({"kind": "ivf"}, build.content_digest(chunks))


def test_hnsw_build_reports_recall(tmp_path, docs_folder, build_script, embedder):
    out = tmp_path / "hnsw"
    args = build_script.parse_args(
        ["--docs", str(docs_folder), "--out", str(out), "--kind", "hnsw", "--chunk-words", "12", "--overlap-words", "2"]
    )
    meta = build_script.run(args, embedder=embedder)
    assert meta["index"]["kind"] == "hnsw" and 0.9 <= meta["recall_at_10"] <= 1.0


def test_script_runs_standalone_and_explains_a_bad_append(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "build" / "build_index.py"), "--append", "--out", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "--append: no index" in result.stderr
