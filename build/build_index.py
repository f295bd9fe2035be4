"""Build the retrieval index (FAISS + SQLite docstore + BM25 + meta.json) from documents.

With no --docs it indexes the default corpus (the Python standard library's documentation,
rendered from this interpreter: no download). Re-running with the same inputs and settings is
a no-op, and chunks seen before come from the embedding cache. The new index is published as
a new version (tritonrag.retrieval.versions), so a running server switches to it atomically.
--append adds the documents not yet indexed (like `python -m tritonrag.retrieval.index_cli add`).

    python build/build_index.py [--docs FOLDER ...] [--default-corpus] [--corpus full|core] [--out DIR]
                                [--append] [--kind auto|flat|ivf|hnsw] [--chunking structured|window] [--force]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tritonrag.errors import InvalidInput  # noqa: E402
from tritonrag.retrieval import builder, index_cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    index_cli.add_build_flags(parser)
    parser.add_argument("--append", action="store_true", help="add documents not yet in the index at --out")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, embedder=None) -> dict:
    """Build or append as args say; returns the new meta ({} when nothing had to be done)."""
    if not args.append:
        return index_cli.run_build(args, embedder)
    if builder.current_meta(args.out) is None:
        raise SystemExit(f"--append: no index at {args.out}")
    docs, inputs = index_cli.load_documents(args.docs, args.default_corpus, args.corpus)
    meta = builder.add_documents(args.out, docs, embedder, inputs=inputs)
    if not meta:
        print(f"nothing to append: every document is already in {args.out}")
    return meta


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    try:
        run(parse_args(argv))
    except InvalidInput as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
