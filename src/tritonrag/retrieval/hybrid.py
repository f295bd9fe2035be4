"""Fusing the dense and the BM25 ranking of the first stage into one.

Two standard ways, both over the top DEPTH of each list:
- `rrf`: reciprocal-rank fusion, sum of 1 / (RRF_K + rank) (Cormack et al. 2009): ignores
  score scales, needs no tuning;
- `wsum`: (1 - w) * dense + w * bm25, each min-max scaled over its own list; a passage
  missing from a list scores 0 there.
Which one is the default, and its weight, was chosen on the eval set (see DEFAULT_FUSION).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tritonrag.errors import InvalidInput

FUSIONS = ("dense", "bm25", "rrf", "wsum")
RRF_K = 60
DEPTH = 50  # each list's length before fusion
# Chosen on tests/data/stdlib_eval.jsonl (python -m tritonrag.retrieval.evaluate --fusion ...), MRR@10:
# dense 0.566, rrf 0.548, wsum 0.2 0.582, 0.3 0.596, 0.4 0.580, 0.5 0.568 (README "Retrieval quality").
DEFAULT_FUSION = "wsum"
DEFAULT_WEIGHT = 0.3

Ranked = Sequence[tuple[int, float]]


def fuse(dense: Ranked, lexical: Ranked, k: int, method: str = DEFAULT_FUSION, weight: float = DEFAULT_WEIGHT):
    """The top k (id, fused score) of two rankings of (id, score), best first."""
    if method not in FUSIONS:
        raise InvalidInput(f"fusion must be one of {FUSIONS}, got {method!r}")
    if method == "dense" or not lexical:
        return list(dense[:k])
    if method == "bm25":
        return list(lexical[:k])
    scores = _rrf(dense, lexical) if method == "rrf" else _wsum(dense, lexical, weight)
    order = sorted(scores, key=lambda i: -scores[i])  # dicts keep insertion order: ties favour dense
    return [(i, scores[i]) for i in order[:k]]


def _rrf(dense: Ranked, lexical: Ranked) -> dict[int, float]:
    scores: dict[int, float] = {}
    for ranking in (dense, lexical):
        for rank, (i, _) in enumerate(ranking, start=1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (RRF_K + rank)
    return scores


def _wsum(dense: Ranked, lexical: Ranked, weight: float) -> dict[int, float]:
    scores: dict[int, float] = {}
    for ranking, w in ((dense, 1.0 - weight), (lexical, weight)):
        for (i, _), scaled in zip(ranking, _minmax([s for _, s in ranking])):
            scores[i] = scores.get(i, 0.0) + w * scaled
    return scores


def _minmax(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not len(arr):
        return arr
    span = arr.max() - arr.min()
    return (arr - arr.min()) / span if span > 0 else np.ones_like(arr)
