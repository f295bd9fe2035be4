"""Build the retrieval index (FAISS + SQLite docstore + meta.json) from documents.

With no --docs it indexes the default corpus (the Python standard library's own docs, no
download). Re-running with the same inputs and settings is a no-op; --append adds the
documents not yet indexed to an existing index. The folder is written beside the output
and swapped in at the end, so a server never sees a half-written index.

    python build/build_index.py [--docs FOLDER ...] [--default-corpus] [--out DIR] [--append]
                                [--kind auto|flat|ivf|hnsw] [--chunk-words N --overlap-words N] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tritonrag.paths import index_dir  # noqa: E402
from tritonrag.retrieval import corpus  # noqa: E402
from tritonrag.retrieval.corpus import Chunk, Document  # noqa: E402
from tritonrag.retrieval.docstore import DocStore  # noqa: E402
from tritonrag.retrieval.index import (  # noqa: E402
    DOCSTORE_FILE,
    KINDS,
    META_FILE,
    add,
    build_index,
    describe,
    load_index,
    measure_recall,
    read_meta,
    resolve_kind,
    save_index,
    stored_vectors,
    synthetic_queries,
)

FORMAT = 1
RECALL_K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, action="append", default=[], help="folder of .txt/.md/.jsonl (repeatable)")
    parser.add_argument(
        "--default-corpus", action="store_true", help="also index the default corpus (implied without --docs)"
    )
    parser.add_argument("--out", type=Path, default=index_dir(), help="index folder (default: %(default)s)")
    parser.add_argument("--append", action="store_true", help="add documents not yet in the index at --out")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="auto = exact below 50k chunks, IVF above")
    parser.add_argument(
        "--chunk-words", type=int, default=None, help=f"words per chunk (default {corpus.DEFAULT_CHUNK_WORDS})"
    )
    parser.add_argument(
        "--overlap-words",
        type=int,
        default=None,
        help=f"words shared by neighbours (default {corpus.DEFAULT_OVERLAP_WORDS})",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="chunks per embedding batch")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    return parser.parse_args(argv)


def load_documents(folders: list[Path], with_default: bool) -> tuple[list[Document], list[str]]:
    """Documents from the folders (plus the default corpus), and a description of the inputs."""
    docs, inputs = [], []
    if with_default or not folders:
        docs += corpus.default_corpus()
        inputs.append(f"default-corpus (python {platform.python_version()})")
    for folder in folders:
        docs += corpus.load_folder(folder)
        inputs.append(str(folder.resolve()))
    seen: dict[str, int] = {}
    for doc in docs:
        seen[doc.doc_id] = seen.get(doc.doc_id, 0) + 1
    duplicates = sorted(d for d, n in seen.items() if n > 1)
    if duplicates:
        raise SystemExit(f"duplicate document ids across inputs: {duplicates[:5]}; index those folders separately")
    return docs, inputs


def content_digest(chunks: list[Chunk], start: int = 0) -> int:
    """Order-free digest of chunks: the sum of their SHA-256 values mod 2**256 (so appends can extend it)."""
    total = start
    for c in chunks:
        record = "\0".join((c.chunk_id, c.doc_id, c.title, c.source, c.text, str(c.start)))
        total += int.from_bytes(hashlib.sha256(record.encode()).digest(), "big")
    return total % 2**256


def fingerprint(settings: dict, digest: int) -> str:
    """What the up-to-date check compares: settings plus content digest."""
    blob = json.dumps(settings, sort_keys=True) + f"{digest:064x}"
    return hashlib.sha256(blob.encode()).hexdigest()


def settings_for(embedder, kind: str, chunk_words: int, overlap_words: int) -> dict:
    weights = embedder.model_dir / "model.safetensors"
    return {
        "format": FORMAT,
        "kind": kind,
        "embedder": embedder.name,
        "embedder_bytes": weights.stat().st_size if weights.exists() else None,
        "max_seq_length": embedder.max_seq_length,
        "chunk_words": chunk_words,
        "overlap_words": overlap_words,
    }


def embed_chunks(embedder, chunks: list[Chunk], batch_size: int):
    """Embed title + text of each chunk, with a progress bar; returns (vectors, seconds)."""
    started = time.perf_counter()
    vectors = embedder.embed([corpus.passage_text(c.title, c.text) for c in chunks], batch_size, progress=True)
    return vectors, time.perf_counter() - started


def recall_report(index) -> dict:
    """recall@10 against exact search for approximate kinds; {} for flat."""
    if describe(index)["kind"] == "flat" or index.ntotal == 0:
        return {}
    _, vectors = stored_vectors(index)
    recall = measure_recall(index, synthetic_queries(vectors), RECALL_K)
    return {f"recall_at_{RECALL_K}": round(recall, 4), "recall_queries": "200 unit midpoints of random stored pairs"}


def build_fresh(out: Path, chunks: list[Chunk], settings: dict, embedder, batch_size: int, inputs: list[str]) -> dict:
    """Write a new index folder for chunks at out (via a temporary sibling)."""
    vectors, seconds = embed_chunks(embedder, chunks, batch_size)
    index = build_index(vectors, settings["kind"])
    staging = _staging(out)
    store = DocStore(staging / DOCSTORE_FILE)
    store.add(chunks)
    store.close()
    digest = content_digest(chunks)
    meta = _meta(settings, index, digest, inputs, len({c.doc_id for c in chunks}), seconds)
    save_index(staging, index, meta)
    _swap_in(staging, out)
    return meta


def build_append(out: Path, chunks: list[Chunk], meta: dict, embedder, batch_size: int, inputs: list[str]) -> dict:
    """Add the chunks of documents not yet in the index at out; returns the new meta."""
    store = DocStore(out / DOCSTORE_FILE, readonly=True)
    known = store.doc_ids()
    fresh = [c for c in chunks if c.doc_id not in known]
    _warn_changed(store, [c for c in chunks if c.doc_id in known])
    store.close()
    if not fresh:
        return {}
    staging = _staging(out)
    shutil.copytree(out, staging, dirs_exist_ok=True)
    index, _ = load_index(staging)
    vectors, seconds = embed_chunks(embedder, fresh, batch_size)
    store = DocStore(staging / DOCSTORE_FILE)
    add(index, vectors, store.add(fresh))
    store.close()
    digest = content_digest(fresh, int(meta["content_digest"], 16))
    documents = meta["documents"] + len({c.doc_id for c in fresh})
    settings = {k: meta[k] for k in settings_keys()}
    new_meta = _meta(settings, index, digest, sorted(set(meta["inputs"]) | set(inputs)), documents, seconds)
    save_index(staging, index, new_meta)
    _swap_in(staging, out)
    return new_meta


def settings_keys() -> tuple[str, ...]:
    """The meta.json keys that make up the build settings (an append keeps them)."""
    return ("format", "kind", "embedder", "embedder_bytes", "max_seq_length", "chunk_words", "overlap_words")


def _warn_changed(store: DocStore, chunks: list[Chunk]) -> None:
    by_doc: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    changed = [d for d, cs in by_doc.items() if [p.text for p in store.passages_of(d)] != [c.text for c in cs]]
    if changed:
        print(
            f"warning: {len(changed)} indexed documents changed since (e.g. {changed[0]}); "
            "--append keeps the old text, rebuild without --append to update them",
            file=sys.stderr,
        )


def _meta(settings: dict, index, digest: int, inputs: list[str], documents: int, seconds: float) -> dict:
    return {
        **settings,
        "index": describe(index),
        "dim": int(index.d),
        "count": int(index.ntotal),
        "documents": documents,
        "inputs": inputs,
        "content_digest": f"{digest:064x}",
        "fingerprint": fingerprint(settings, digest),
        "embed_seconds": round(seconds, 1),
        **recall_report(index),
    }


def _staging(out: Path) -> Path:
    """A fresh hidden sibling of out to build in; leftovers of interrupted builds are removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    staging.mkdir()
    return staging


def _swap_in(staging: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def run(args: argparse.Namespace, embedder=None) -> dict:
    """Build or append as args say; returns meta.json's content ({} when nothing had to be done)."""
    existing = read_meta(args.out) if (args.out / META_FILE).exists() else None
    if args.append and existing is None:
        raise SystemExit(f"--append: no index at {args.out}")
    chunk_words, overlap_words = chunk_settings(args, existing)
    docs, inputs = load_documents(args.docs, args.default_corpus)
    chunks = corpus.chunk_all(docs, chunk_words, overlap_words)
    embedder = embedder or _default_embedder()
    if args.append:
        return _report(build_append(args.out, chunks, existing, embedder, args.batch_size, inputs), args.out)
    settings = settings_for(embedder, resolve_kind(args.kind, len(chunks)), chunk_words, overlap_words)
    if not args.force and existing and existing.get("fingerprint") == fingerprint(settings, content_digest(chunks)):
        print(
            f"index up to date in {args.out} ({existing['count']} chunks, {existing['index']['kind']}); --force rebuilds"
        )
        return {}
    print(
        f"{len(docs)} documents -> {len(chunks)} chunks of {chunk_words} words ({overlap_words} overlap); "
        f"index kind {settings['kind']} (asked: {args.kind})"
    )
    return _report(build_fresh(args.out, chunks, settings, embedder, args.batch_size, inputs), args.out)


def chunk_settings(args: argparse.Namespace, existing: dict | None) -> tuple[int, int]:
    """(chunk words, overlap words): as asked, else the index's own when appending, else the defaults."""
    base = existing if args.append else {}
    words = args.chunk_words or base.get("chunk_words", corpus.DEFAULT_CHUNK_WORDS)
    overlap = (
        args.overlap_words
        if args.overlap_words is not None
        else base.get("overlap_words", corpus.DEFAULT_OVERLAP_WORDS)
    )
    if args.append and (words, overlap) != (existing["chunk_words"], existing["overlap_words"]):
        raise SystemExit(
            f"--append: the index uses {existing['chunk_words']}/{existing['overlap_words']} words per chunk/overlap"
        )
    return words, overlap


def _default_embedder():
    from tritonrag.retrieval.embedder import Embedder

    return Embedder()


def _report(meta: dict, out: Path) -> dict:
    if not meta:
        print(f"nothing to append: every document is already in {out}")
        return meta
    line = f"wrote {out}: {meta['count']} chunks, {meta['documents']} documents, index {meta['index']}"
    if f"recall_at_{RECALL_K}" in meta:
        line += f", recall@{RECALL_K} vs exact search {meta[f'recall_at_{RECALL_K}']:.3f}"
    print(line + f"; embedding took {meta['embed_seconds']} s")
    return meta


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    run(parse_args(argv))
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
