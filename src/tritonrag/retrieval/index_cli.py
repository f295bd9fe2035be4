"""Build an index, or add and delete documents while a server uses it (each change a new version).

    python -m tritonrag.retrieval.index_cli build  [--docs FOLDER ...] [--default-corpus] [--corpus full|core]
                                                   [--out DIR] [--kind auto|flat|ivf|hnsw] [--chunking ...] [--force]
    python -m tritonrag.retrieval.index_cli add    --docs FOLDER [...] [--replace] [--out DIR]
    python -m tritonrag.retrieval.index_cli delete DOC_ID [...] [--out DIR]
    python -m tritonrag.retrieval.index_cli status [--out DIR]

A running retriever model polls the index's CURRENT pointer and switches to the new version
within its `reload_interval_s` (1 s by default); requests never see a half-written index.
Folders hold .txt, .md and .jsonl files (tritonrag.retrieval.corpus.load_folder); a document's
id is its path relative to the folder, or a .jsonl line's `id`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from tritonrag.errors import InvalidInput
from tritonrag.paths import index_dir
from tritonrag.retrieval import builder, corpus, versions
from tritonrag.retrieval.corpus import Document
from tritonrag.retrieval.index import KINDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="index a corpus from scratch (a no-op when up to date)")
    add_build_flags(build)
    add = commands.add_parser("add", help="add documents to the served index")
    add.add_argument("--docs", type=Path, action="append", required=True, help="folder of .txt/.md/.jsonl")
    add.add_argument("--replace", action="store_true", help="re-index documents that are already indexed")
    delete = commands.add_parser("delete", help="delete documents from the served index")
    delete.add_argument("doc_ids", nargs="+", help="document ids (see `status` or the sources' ids before '#')")
    status = commands.add_parser("status", help="the served version and its meta.json")
    for sub in (add, delete, status):
        sub.add_argument("--out", type=Path, default=index_dir(), help="index home (default: %(default)s)")
    return parser


def add_build_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a full build (shared with build/build_index.py)."""
    parser.add_argument("--docs", type=Path, action="append", default=[], help="folder of .txt/.md/.jsonl (repeatable)")
    parser.add_argument(
        "--default-corpus", action="store_true", help="index the default corpus too (implied without --docs)"
    )
    parser.add_argument(
        "--corpus",
        choices=("full", "core"),
        default="full",
        help="default corpus: every public stdlib module (full) or the CORE_MODULES most programs use",
    )
    parser.add_argument("--out", type=Path, default=index_dir(), help="index home (default: %(default)s)")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="auto: by corpus size (see index.resolve_kind)")
    parser.add_argument("--chunking", choices=corpus.CHUNKINGS, default="structured")
    parser.add_argument("--chunk-words", type=int, default=corpus.DEFAULT_CHUNK_WORDS, help="window chunking: words")
    parser.add_argument("--overlap-words", type=int, default=corpus.DEFAULT_OVERLAP_WORDS, help="shared by windows")
    parser.add_argument("--batch-size", type=int, default=32, help="chunks per embedding batch")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: <out>/embeddings.sqlite)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")


def load_documents(folders: list[Path], with_default: bool, which: str = "full") -> tuple[list[Document], list[str]]:
    """Documents of the folders (plus the default corpus), and a description of the inputs."""
    docs, inputs = [], []
    if with_default or not folders:
        docs += corpus.default_corpus(None if which == "full" else corpus.CORE_MODULES)
        inputs.append(f"default-corpus {which} (python {platform.python_version()})")
    for folder in folders:
        docs += corpus.load_folder(folder)
        inputs.append(str(folder.resolve()))
    seen: dict[str, int] = {}
    for doc in docs:
        seen[doc.doc_id] = seen.get(doc.doc_id, 0) + 1
    duplicates = sorted(d for d, n in seen.items() if n > 1)
    if duplicates:
        raise InvalidInput(f"duplicate document ids across inputs: {duplicates[:5]}; index those folders separately")
    return docs, inputs


def run_build(args: argparse.Namespace, embedder=None) -> dict:
    """A full build as args say; returns the new meta ({} when up to date)."""
    docs, inputs = load_documents(args.docs, args.default_corpus, args.corpus)
    options = builder.Options(
        kind=args.kind,
        chunking=args.chunking,
        chunk_words=args.chunk_words,
        overlap_words=args.overlap_words,
        batch_size=args.batch_size,
        force=args.force,
        cache=args.cache,
        inputs=inputs,
    )
    return builder.build(args.out, docs, options, embedder)


def run(args: argparse.Namespace, embedder=None) -> dict:
    """Carry out one parsed command; returns the new meta ({} when nothing changed)."""
    if args.command == "build":
        return run_build(args, embedder)
    if args.command == "add":
        docs, inputs = load_documents(args.docs, False)
        return builder.add_documents(args.out, docs, embedder, args.replace, inputs)
    if args.command == "delete":
        return builder.delete_documents(args.out, args.doc_ids)
    meta = builder.current_meta(args.out) or {}
    print(json.dumps({"home": str(args.out), "serving": versions.pointer(args.out), **meta}, indent=2))
    return meta


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InvalidInput as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
