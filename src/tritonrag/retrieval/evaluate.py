"""Retrieval quality on labelled questions: recall@k and MRR@10, first stage and after reranking.

    python -m tritonrag.retrieval.evaluate [--index DIR] [--reranker default|none|NAME|PATH ...] [--k 1,3,5,10]
                                 [--candidates 30] [--strict] [--json OUT]

A question is answered by one document (doc-level labels, so re-chunking keeps them valid).
A retrieved chunk is a hit when it comes from that document, or (unless --strict) when it is a
verbatim copy of part of it: pydoc topics repeat each other (topic:compound contains
topic:if word for word), so a chunk counts when >= 50% of its 8-word shingles occur in the
labelled document and its own document contains >= 90% of the labelled document's shingles.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonrag.paths import REPO_ROOT, index_dir
from tritonrag.retrieval.docstore import DocStore, Passage
from tritonrag.retrieval.embedder import Embedder
from tritonrag.retrieval.reranker import Reranker
from tritonrag.retrieval.retriever import Hit, Retriever

EVAL_SET = REPO_ROOT / "tests" / "data" / "retrieval_eval.jsonl"
SHINGLE = 8
CHUNK_INSIDE = 0.5
DOC_CONTAINS = 0.9


@dataclass(frozen=True)
class Question:
    """A labelled question: the document that answers it."""

    question: str
    doc_id: str


def load_questions(path: str | Path = EVAL_SET) -> list[Question]:
    """Questions from a .jsonl file of {"question", "doc_id"} objects."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Question(r["question"], r["doc_id"]) for r in map(json.loads, filter(str.strip, lines))]


def shingles(text: str) -> set[tuple[str, ...]]:
    """Overlapping SHINGLE-word tuples (the whole text when it is shorter)."""
    words = text.split()
    return {tuple(words[i : i + SHINGLE]) for i in range(max(len(words) - SHINGLE + 1, 1))}


class Relevance:
    """Decides whether a retrieved passage answers a question labelled with doc_id (see module doc)."""

    def __init__(self, docstore: DocStore, strict: bool = False) -> None:
        self.docstore, self.strict = docstore, strict
        self._docs: dict[str, set] = {}

    def _doc_shingles(self, doc_id: str) -> set:
        if doc_id not in self._docs:
            self._docs[doc_id] = set().union(*(shingles(p.text) for p in self.docstore.passages_of(doc_id)))
        return self._docs[doc_id]

    def is_hit(self, passage: Passage, doc_id: str) -> bool:
        if passage.doc_id == doc_id:
            return True
        if self.strict:
            return False
        label, own = self._doc_shingles(doc_id), shingles(passage.text)
        if not label or len(own & label) < CHUNK_INSIDE * len(own):
            return False
        return len(label & self._doc_shingles(passage.doc_id)) >= DOC_CONTAINS * len(label)


def first_hit_rank(hits: Sequence[Hit], doc_id: str, relevance: Relevance) -> int | None:
    """1-based rank of the first relevant hit, or None."""
    return next((r for r, h in enumerate(hits, start=1) if relevance.is_hit(h.passage, doc_id)), None)


def metrics(ranks: Sequence[int | None], ks: Sequence[int]) -> dict[str, float]:
    """recall@k for each k and MRR@10 over first-hit ranks."""
    n = max(len(ranks), 1)
    out = {f"recall@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
    out["mrr@10"] = sum(1.0 / r for r in ranks if r is not None and r <= 10) / n
    return out


def run(
    index: Path,
    rerankers: Sequence[str],
    ks: Sequence[int],
    candidates: int,
    strict: bool,
    questions: Sequence[Question],
) -> dict[str, dict]:
    """Metrics of first-stage retrieval and of each reranker over the same candidates."""
    embedder, retriever = Embedder(), Retriever(index, use_gpu="never")
    relevance = Relevance(retriever.docstore, strict)
    texts = [q.question for q in questions]
    started = time.perf_counter()
    hits_lists = retriever.search(embedder.embed(texts), max(candidates, max(ks)))
    first_ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
    results = {"first stage": _score(hits_lists, questions, relevance, ks, first_ms)}
    results["first stage"][f"recall@{candidates}"] = metrics(
        [first_hit_rank(h, q.doc_id, relevance) for h, q in zip(hits_lists, questions)], [candidates]
    )[f"recall@{candidates}"]
    top_n = max(max(ks), 10)
    for spec in rerankers:
        reranker = Reranker.from_config(spec, embedder=embedder)
        started = time.perf_counter()
        reranked = [reranker.rerank(t, h[:candidates], top_n) for t, h in zip(texts, hits_lists)]
        ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        label = f"rerank {reranker.name}" + (" (default)" if spec == "default" else "")
        results[label] = _score(reranked, questions, relevance, ks, ms)
    return results


def _score(hits_lists, questions, relevance, ks, ms_per_query: float) -> dict:
    ranks = [first_hit_rank(h, q.doc_id, relevance) for h, q in zip(hits_lists, questions)]
    return {**metrics(ranks, ks), "ms/query": round(ms_per_query, 1)}


def print_table(results: dict[str, dict], title: str) -> None:
    """The results as a rich table, one row per configuration."""
    from rich.console import Console
    from rich.table import Table

    columns = list(dict.fromkeys(c for row in results.values() for c in row))
    table = Table(title=title)
    table.add_column("configuration", no_wrap=True)
    for c in columns:
        table.add_column(c, justify="right", no_wrap=True)
    for name, row in results.items():
        table.add_row(name, *(_cell(c, row.get(c)) for c in columns))
    Console(width=max(120, 14 * len(columns) + 30)).print(table)


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if column == "ms/query" else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=index_dir())
    parser.add_argument(
        "--reranker",
        action="append",
        default=None,
        help="default | none | a candidate name | a CrossEncoder directory (repeatable, comma-separated)",
    )
    parser.add_argument("--k", default="1,3,5,10", help="cut-offs for recall@k")
    parser.add_argument("--candidates", type=int, default=30, help="first-stage hits handed to the reranker")
    parser.add_argument("--questions", type=Path, default=EVAL_SET)
    parser.add_argument("--strict", action="store_true", help="count only chunks of the labelled document")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rerankers = [s for spec in (args.reranker or ["default"]) for s in spec.split(",") if s]
    ks = [int(k) for k in args.k.split(",")]
    questions = load_questions(args.questions)
    results = run(args.index, rerankers, ks, args.candidates, args.strict, questions)
    print_table(results, f"{len(questions)} questions, index {args.index}{' (strict)' if args.strict else ''}")
    if args.json:
        args.json.write_text(
            json.dumps({"questions": len(questions), "strict": args.strict, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
