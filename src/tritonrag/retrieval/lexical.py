"""BM25 over the whole corpus (bm25s), with a tokenizer that knows Python identifiers.

Dense MiniLM embeddings miss exact names: "What does shutil.rmtree do?" or "zipfile
extractall" are lexical questions. bm25s keeps the index as a sparse matrix of precomputed
BM25 term scores, so a query costs one sparse row-sum (well under a millisecond for the
standard library's ~8k chunks).

Terms: lower-cased words, each identifier also split at dots, underscores and camelCase
(`ZipFile.extractall` -> zipfile, extractall, zip, file; `lru_cache` -> lru_cache, lru,
cache), English function words dropped (Python keywords such as `with`, `if`, `for` kept),
then Snowball-stemmed (PyStemmer) so that "caching", "cached" and "cache" meet.

An index folder holds bm25s's files plus `ids.npy`, the docstore id of each BM25 row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

IDS_FILE = "ids.npy"
# Measured on tests/data/stdlib_eval.jsonl fused with dense (wsum 0.3), MRR@10: k1/b 1.2/0.75 0.577,
# 1.2/0.4 0.591, 0.9/0.4 0.596 (Anserini's defaults), 1.5/0.9 0.580, 2.0/0.75 0.577. Short API entries
# gain from weaker length normalisation.
K1, B = 0.9, 0.4

# English function words that carry no topic; Python keywords (is, in, if, for, with, not, ...) are kept.
STOPWORDS = frozenset(
    "a an the of to how do does did i my me we you your what which who when where why can could should "
    "would it its this that these those be been being are was were has have had there their they them "
    "on at by into about get use using used way some any than then so such also only just one will am "
    "but make want need let python".split()
)
_WORD = re.compile(r"[A-Za-z0-9_.]+")
_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_STEMMER = Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """BM25 terms of text (see the module docstring), in order, repeats kept."""
    out: list[str] = []
    for word in _WORD.findall(text):
        for piece in filter(None, word.split(".")):
            lowered = piece.lower().strip("_")
            parts = [p.lower() for p in _PART.findall(piece)]
            candidates = [lowered] + (parts if len(parts) > 1 else [])
            out.extend(t for t in candidates if t and t not in STOPWORDS)
    return _STEMMER.stemWords(out)


class LexicalIndex:
    """BM25 over passages; search returns (docstore id, score) pairs, best first."""

    def __init__(self, model: bm25s.BM25, ids: np.ndarray) -> None:
        self.model, self.ids = model, np.asarray(ids, dtype=np.int64)

    @classmethod
    def build(cls, texts: Sequence[str], ids: Sequence[int]) -> LexicalIndex:
        """Index texts, the i-th under docstore id ids[i]."""
        if len(texts) != len(ids):
            raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        model = bm25s.BM25(k1=K1, b=B)
        model.index([terms(t) or [""] for t in texts], show_progress=False)
        return cls(model, np.asarray(ids, dtype=np.int64))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(str(folder), show_progress=False)
        np.save(folder / IDS_FILE, self.ids)

    @classmethod
    def load(cls, folder: str | Path) -> LexicalIndex:
        folder = Path(folder)
        model = bm25s.BM25.load(str(folder), show_progress=False, verbosity=0)
        return cls(model, np.load(folder / IDS_FILE))

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Top-k (id, BM25 score) per query; passages sharing no term with the query are left out."""
        return [self._search_one(q, k) for q in queries]

    def _search_one(self, query: str, k: int) -> list[tuple[int, float]]:
        token_ids = self.model.get_tokens_ids(terms(query))
        if not token_ids or not len(self.ids):
            return []
        scores = self.model.get_scores_from_ids(token_ids)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.ids[i]), float(scores[i])) for i in top if scores[i] > 0]
