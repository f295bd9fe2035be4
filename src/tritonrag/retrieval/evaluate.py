"""Retrieval quality on hand-written questions: recall@k and MRR@10, first stage and after reranking.

    python -m tritonrag.retrieval.evaluate [--index DIR] [--fusion dense,bm25,rrf,wsum:0.3 ...]
                                 [--reranker default|none|NAME|PATH ...] [--k 1,3,5,10] [--candidates 30]
                                 [--questions FILE] [--json OUT]

The questions (tests/data/stdlib_eval.jsonl) are what a Python user asks ("How do I cache the
results of a function?"), written by hand, each labelled with the qualified names of the API
entries that answer it (["functools.lru_cache", "functools.cache"]) or pydoc topics
("topic:with"). A retrieved chunk is a hit when its document is a labelled entry or, for a
labelled class, one of that class's methods (the label `zipfile.ZipFile` accepts
`zipfile.ZipFile.extractall`). Rows: the dense and BM25 first stages alone, each fusion asked
for, then each reranker over the default first stage's top `--candidates`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonrag.paths import REPO_ROOT, index_dir
from tritonrag.retrieval import hybrid
from tritonrag.retrieval.docstore import DocStore, Passage
from tritonrag.retrieval.embedder import Embedder
from tritonrag.retrieval.reranker import Reranker
from tritonrag.retrieval.retriever import Hit, Retriever

EVAL_SET = REPO_ROOT / "tests" / "data" / "stdlib_eval.jsonl"
CLASS_KINDS = ("class ", "exception ")


@dataclass(frozen=True)
class Question:
    """A question and the document ids (qualified names, topic:NAME) that answer it."""

    question: str
    answers: tuple[str, ...]


def load_questions(path: str | Path = EVAL_SET) -> list[Question]:
    """Questions from a .jsonl file of {"question", "answers": [...]} objects."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Question(r["question"], tuple(r["answers"])) for r in map(json.loads, filter(str.strip, lines))]


class Relevance:
    """Decides whether a retrieved passage answers a question (see the module docstring)."""

    def __init__(self, docstore: DocStore) -> None:
        self.docstore = docstore
        self._is_class: dict[str, bool] = {}

    def _labels_class(self, doc_id: str) -> bool:
        if doc_id not in self._is_class:
            passages = self.docstore.passages_of(doc_id)
            self._is_class[doc_id] = bool(passages) and passages[0].title.startswith(CLASS_KINDS)
        return self._is_class[doc_id]

    def is_hit(self, passage: Passage, answers: Sequence[str]) -> bool:
        return any(
            passage.doc_id == a or (passage.doc_id.startswith(a + ".") and self._labels_class(a)) for a in answers
        )


def first_hit_rank(hits: Sequence[Hit], answers: Sequence[str], relevance: Relevance) -> int | None:
    """1-based rank of the first relevant hit, or None."""
    return next((r for r, h in enumerate(hits, start=1) if relevance.is_hit(h.passage, answers)), None)


def metrics(ranks: Sequence[int | None], ks: Sequence[int]) -> dict[str, float]:
    """recall@k for each k and MRR@10 over first-hit ranks."""
    n = max(len(ranks), 1)
    out = {f"recall@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
    out["mrr@10"] = sum(1.0 / r for r in ranks if r is not None and r <= 10) / n
    return out


def parse_fusion(spec: str) -> tuple[str, float]:
    """'rrf', 'dense', 'bm25', 'wsum' or 'wsum:0.4' -> (method, weight)."""
    method, _, weight = spec.partition(":")
    return method, float(weight) if weight else hybrid.DEFAULT_WEIGHT


def fusion_label(method: str, weight: float) -> str:
    default = (method, weight) == (hybrid.DEFAULT_FUSION, hybrid.DEFAULT_WEIGHT)
    name = {"dense": "dense only", "bm25": "BM25 only", "rrf": "hybrid RRF"}.get(method, f"hybrid wsum {weight:g}")
    return name + (" (default)" if default else "")


def run(
    index: Path,
    fusions: Sequence[str],
    rerankers: Sequence[str],
    ks: Sequence[int],
    candidates: int,
    questions: Sequence[Question],
) -> dict[str, dict]:
    """Metrics of each first stage, then of each reranker over the default first stage's candidates."""
    embedder, retriever = Embedder(runtime="onnxruntime"), Retriever(index, use_gpu="never")
    relevance = Relevance(retriever.docstore)
    texts = [q.question for q in questions]
    vectors = embedder.embed(texts)
    depth = max(candidates, max(ks))
    results: dict[str, dict] = {}
    for spec in fusions:
        retriever.fusion, retriever.weight = parse_fusion(spec)
        started = time.perf_counter()
        hits = retriever.search(vectors, depth, texts)
        ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        results["first stage: " + fusion_label(retriever.fusion, retriever.weight)] = _score(
            hits, questions, relevance, [*ks, candidates], ms
        )
    retriever.fusion, retriever.weight = hybrid.DEFAULT_FUSION, hybrid.DEFAULT_WEIGHT
    first = retriever.search(vectors, candidates, texts)
    for spec in rerankers:
        reranker = Reranker.from_config(spec, embedder=embedder)
        started = time.perf_counter()
        reranked = [reranker.rerank(t, h, max(max(ks), 10)) for t, h in zip(texts, first)]
        ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        label = f"reranked: {reranker.name}" + (" (default)" if spec == "default" else "")
        results[label] = _score(reranked, questions, relevance, ks, ms)
    return results


def _score(hits_lists, questions, relevance, ks, ms_per_query: float) -> dict:
    ranks = [first_hit_rank(h, q.answers, relevance) for h, q in zip(hits_lists, questions)]
    return {**metrics(ranks, sorted(set(ks))), "ms/query": round(ms_per_query, 1)}


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
    Console(width=max(120, 14 * len(columns) + 40)).print(table)


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if column == "ms/query" else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=index_dir())
    parser.add_argument(
        "--fusion",
        default=f"dense,bm25,rrf,wsum:{hybrid.DEFAULT_WEIGHT}",
        help="first stages to measure: dense, bm25, rrf, wsum[:weight] (comma-separated)",
    )
    parser.add_argument(
        "--reranker",
        action="append",
        default=None,
        help="default | none | a candidate name | a CrossEncoder directory (repeatable, comma-separated)",
    )
    parser.add_argument("--k", default="1,3,5,10", help="cut-offs for recall@k")
    parser.add_argument("--candidates", type=int, default=30, help="first-stage hits handed to the reranker")
    parser.add_argument("--questions", type=Path, default=EVAL_SET)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rerankers = [s for spec in (args.reranker or ["default"]) for s in spec.split(",") if s]
    fusions = [s for s in args.fusion.split(",") if s]
    ks = [int(k) for k in args.k.split(",")]
    questions = load_questions(args.questions)
    results = run(args.index, fusions, rerankers, ks, args.candidates, questions)
    print_table(results, f"{len(questions)} questions, index {args.index}")
    if args.json:
        args.json.write_text(json.dumps({"questions": len(questions), "results": results}, indent=2))


if __name__ == "__main__":
    main()
