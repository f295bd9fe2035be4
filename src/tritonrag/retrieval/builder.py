"""Building and changing an index home: full builds, document adds and deletes, each a new version.

Every operation writes a complete version folder (FAISS index, SQLite docstore, BM25 index,
meta.json) beside the served one and publishes it atomically (tritonrag.retrieval.versions),
so a running retriever switches between two complete indexes. Embeddings come through a cache
keyed by content (tritonrag.retrieval.embed_cache): an unchanged chunk is never embedded twice.

meta.json records the settings, counts, the index parameters, a content digest (an order-free
sum of chunk hashes, so adds and deletes update it without reading everything) and a fingerprint
of settings + digest that makes an unchanged rebuild a no-op.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from tritonrag.errors import InvalidInput
from tritonrag.retrieval import corpus, versions
from tritonrag.retrieval.corpus import Chunk, Document
from tritonrag.retrieval.docstore import DocStore
from tritonrag.retrieval.embed_cache import EmbeddingCache
from tritonrag.retrieval.embedder import Embedder
from tritonrag.retrieval.index import (
    DOCSTORE_FILE,
    LEXICAL_DIR,
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
from tritonrag.retrieval.lexical import K1, B, LexicalIndex

FORMAT = 2
RECALL_K = 10
CACHE_FILE = "embeddings.sqlite"
SETTINGS_KEYS = (
    "format",
    "kind",
    "embedder",
    "embedder_bytes",
    "max_seq_length",
    "chunking",
    "chunk_words",
    "overlap_words",
    "max_tokens",
    "bm25",
)


@dataclass
class Options:
    """How to chunk, index and embed (build/build_index.py and `index build` fill it from flags)."""

    kind: str = "auto"
    chunking: str = "structured"
    chunk_words: int = corpus.DEFAULT_CHUNK_WORDS
    overlap_words: int = corpus.DEFAULT_OVERLAP_WORDS
    max_tokens: int = corpus.DEFAULT_MAX_TOKENS
    batch_size: int = 32
    force: bool = False
    cache: Path | None = None  # default: <home>/embeddings.sqlite
    inputs: list[str] = field(default_factory=list)


def default_embedder():
    """The embedder on ONNX Runtime when its graph is built (2.4x torch here), else torch (logged)."""
    return Embedder(runtime="onnxruntime")


def settings_for(embedder, options: Options, count: int) -> dict[str, Any]:
    """The settings an index is built with (the up-to-date check compares them)."""
    weights = embedder.model_dir / "model.safetensors"
    return {
        "format": FORMAT,
        "kind": resolve_kind(options.kind, count),
        "embedder": embedder.name,
        "embedder_bytes": weights.stat().st_size if weights.exists() else None,
        "max_seq_length": embedder.max_seq_length,
        "chunking": options.chunking,
        "chunk_words": options.chunk_words,
        "overlap_words": options.overlap_words,
        "max_tokens": options.max_tokens,
        "bm25": f"bm25s k1={K1} b={B}",
    }


def chunk_documents(documents: Sequence[Document], settings: dict[str, Any], embedder) -> list[Chunk]:
    """Chunks as the settings say; structured chunking counts word pieces with the embedder's tokenizer."""
    return corpus.chunk_all(
        documents,
        settings["chunk_words"],
        settings["overlap_words"],
        settings["chunking"],
        settings["max_tokens"],
        token_counter(embedder),
    )


def token_counter(embedder):
    tokenizer = embedder.tokenizer
    return lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def chunk_digest(chunks: Iterable[Chunk], start: int = 0, sign: int = 1) -> int:
    """Order-free digest: start plus (or, sign=-1, minus) the SHA-256 of each chunk, mod 2**256."""
    total = start
    for c in chunks:
        record = "\0".join((c.chunk_id, c.doc_id, c.title, c.source, c.text, str(c.start)))
        total += sign * int.from_bytes(hashlib.sha256(record.encode()).digest(), "big")
    return total % 2**256


def fingerprint(settings: dict[str, Any], digest: int) -> str:
    """What the up-to-date check compares: settings plus content digest."""
    blob = json.dumps({k: settings[k] for k in SETTINGS_KEYS if k in settings}, sort_keys=True) + f"{digest:064x}"
    return hashlib.sha256(blob.encode()).hexdigest()


def current_meta(home: Path) -> dict[str, Any] | None:
    """meta.json of the served version, or None when nothing is built yet."""
    folder = versions.current(home)
    return read_meta(folder) if (folder / META_FILE).exists() else None


def embed_cached(embedder, chunks: Sequence[Chunk], cache_path: Path, batch_size: int) -> tuple[np.ndarray, int, float]:
    """(vectors, how many were embedded, seconds): title + text of each chunk, through the cache."""
    started = time.perf_counter()
    weights = embedder.model_dir / "model.safetensors"
    size = weights.stat().st_size if weights.exists() else None
    identity = f"{embedder.name}:{size}:{embedder.max_seq_length}"
    cache = EmbeddingCache(cache_path, identity, embedder.dim)
    try:
        texts = [corpus.passage_text(c.title, c.text) for c in chunks]
        vectors, embedded = cache.embed(texts, lambda todo: embedder.embed(todo, batch_size), progress=True)
    finally:
        cache.close()
    return vectors, embedded, time.perf_counter() - started


def build(home: Path, documents: Sequence[Document], options: Options, embedder=None) -> dict[str, Any]:
    """A fresh version of every document; {} when the served version already matches."""
    embedder = embedder or default_embedder()
    with versions.writer_lock(home):
        settings = settings_for(embedder, options, 0)
        chunks = chunk_documents(documents, settings, embedder)
        settings["kind"] = resolve_kind(options.kind, len(chunks))
        digest = chunk_digest(chunks)
        existing = current_meta(home)
        if not options.force and existing and existing.get("fingerprint") == fingerprint(settings, digest):
            print(
                f"index up to date in {home} ({existing['count']} chunks, {existing['index']['kind']}); --force rebuilds"
            )
            return {}
        print(f"{len(documents)} documents -> {len(chunks)} chunks ({options.chunking}); index kind {settings['kind']}")
        vectors, embedded, seconds = embed_cached(
            embedder, chunks, options.cache or home / CACHE_FILE, options.batch_size
        )
        index = build_index(vectors, settings["kind"])
        folder = versions.staging(home)
        store = DocStore(folder / DOCSTORE_FILE)
        ids = store.add(chunks)
        store.close()
        _build_lexical(folder, [corpus.passage_text(c.title, c.text) for c in chunks], ids)
        stats = {"embedded": embedded, "embed_seconds": round(seconds, 1), "inputs": options.inputs}
        return _publish(home, folder, index, settings, digest, stats)


def add_documents(
    home: Path, documents: Sequence[Document], embedder=None, replace: bool = False, inputs: Sequence[str] = ()
) -> dict[str, Any]:
    """A new version with the documents added (with replace, documents already indexed are re-indexed).

    Documents already indexed are skipped without replace. Returns the new meta ({} if nothing changed).
    """
    embedder = embedder or default_embedder()
    with versions.writer_lock(home):
        meta = _require_meta(home)
        served = versions.current(home)
        known = DocStore(served / DOCSTORE_FILE, readonly=True).doc_ids()
        stale = [d.doc_id for d in documents if d.doc_id in known]
        if stale and not replace:
            print(f"skipping {len(stale)} documents already indexed (e.g. {stale[0]}); --replace re-indexes them")
        fresh = [d for d in documents if replace or d.doc_id not in known]
        if not fresh:
            return {}
        folder = _copy_of(home)
        index, _ = load_index(folder)
        store = DocStore(folder / DOCSTORE_FILE)
        digest = int(meta["content_digest"], 16)
        if replace and stale:
            removed = store.chunks_of(stale)
            index = _remove(index, [i for i, _ in removed])
            store.delete_docs(stale)
            digest = chunk_digest([c for _, c in removed], digest, sign=-1)
        chunks = chunk_documents(fresh, meta, embedder)
        vectors, embedded, seconds = embed_cached(embedder, chunks, home / CACHE_FILE, 32)
        add(index, vectors, store.add(chunks))
        _rebuild_lexical(folder, store)
        store.close()
        settings = {k: meta[k] for k in SETTINGS_KEYS}
        all_inputs = sorted(set(meta.get("inputs", [])) | set(inputs))
        stats = {"embedded": embedded, "embed_seconds": round(seconds, 1), "inputs": all_inputs}
        return _publish(home, folder, index, settings, chunk_digest(chunks, digest), stats)


def delete_documents(home: Path, doc_ids: Sequence[str]) -> dict[str, Any]:
    """A new version without the given documents; InvalidInput names any id that is not indexed."""
    with versions.writer_lock(home):
        meta = _require_meta(home)
        served = versions.current(home)
        missing = sorted(set(doc_ids) - DocStore(served / DOCSTORE_FILE, readonly=True).doc_ids())
        if missing:
            raise InvalidInput(f"not in the index: {missing[:10]}")
        folder = _copy_of(home)
        index, _ = load_index(folder)
        store = DocStore(folder / DOCSTORE_FILE)
        removed = store.chunks_of(doc_ids)
        index = _remove(index, [i for i, _ in removed])
        store.delete_docs(doc_ids)
        _rebuild_lexical(folder, store)
        store.close()
        settings = {k: meta[k] for k in SETTINGS_KEYS}
        digest = chunk_digest([c for _, c in removed], int(meta["content_digest"], 16), sign=-1)
        stats = {"embedded": 0, "embed_seconds": 0.0, "inputs": meta.get("inputs", [])}
        return _publish(home, folder, index, settings, digest, stats)


def _require_meta(home: Path) -> dict[str, Any]:
    meta = current_meta(home)
    if meta is None:
        raise InvalidInput(f"no index in {home}: build one first (python build/build_index.py --out {home})")
    if meta.get("format") != FORMAT:
        raise InvalidInput(f"the index in {home} has format {meta.get('format')}, need {FORMAT}: rebuild it")
    return meta


def _copy_of(home: Path) -> Path:
    """A staging folder holding a copy of the served version (the cache is not part of a version)."""
    folder = versions.staging(home)
    shutil.copytree(versions.current(home), folder, dirs_exist_ok=True)
    return folder


def _remove(index: faiss.Index, ids: Sequence[int]) -> faiss.Index:
    """index without ids: removed in place for flat and IVF, rebuilt from its vectors for HNSW."""
    if not ids:
        return index
    if describe(index)["kind"] != "hnsw":
        index.remove_ids(np.asarray(ids, dtype=np.int64))
        return index
    kept_ids, vectors = stored_vectors(index)
    keep = ~np.isin(kept_ids, np.asarray(ids, dtype=np.int64))
    return build_index(vectors[keep], "hnsw", ids=kept_ids[keep])


def _build_lexical(folder: Path, texts: Sequence[str], ids: Sequence[int]) -> None:
    shutil.rmtree(folder / LEXICAL_DIR, ignore_errors=True)
    LexicalIndex.build(texts, ids).save(folder / LEXICAL_DIR)


def _rebuild_lexical(folder: Path, store: DocStore) -> None:
    passages = store.all_passages()
    _build_lexical(folder, [corpus.passage_text(p.title, p.text) for p in passages], [p.id for p in passages])


def _publish(home: Path, folder: Path, index, settings: dict, digest: int, stats: dict) -> dict[str, Any]:
    store = DocStore(folder / DOCSTORE_FILE, readonly=True)
    documents = len(store.doc_ids())
    store.close()
    meta = {
        **settings,
        **stats,
        "index": describe(index),
        "dim": int(index.d),
        "count": int(index.ntotal),
        "documents": documents,
        "lexical": {"kind": "bm25s", "k1": K1, "b": B, "dir": LEXICAL_DIR},
        "content_digest": f"{digest:064x}",
        "fingerprint": fingerprint(settings, digest),
        **recall_report(index),
    }
    save_index(folder, index, meta)
    target = versions.publish(home, folder)
    meta["version"] = target.name
    print(
        f"published {target}: {meta['count']} chunks of {documents} documents, index {meta['index']}, "
        f"{stats['embedded']} chunks embedded ({stats['embed_seconds']} s), the rest from the cache"
    )
    return meta


def recall_report(index) -> dict[str, Any]:
    """recall@10 against exact search for approximate kinds; {} for flat."""
    if describe(index)["kind"] == "flat" or index.ntotal == 0:
        return {}
    _, vectors = stored_vectors(index)
    recall = measure_recall(index, synthetic_queries(vectors), RECALL_K)
    return {f"recall_at_{RECALL_K}": round(recall, 4), "recall_queries": "200 unit midpoints of random stored pairs"}
