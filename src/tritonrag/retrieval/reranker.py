"""Second-stage reranking of retrieved hits: a CrossEncoder checkpoint when configured, else an offline scorer.

No trained cross-encoder ships with this project (none installs offline), so the offline
candidates were measured (python -m tritonrag.retrieval.evaluate --reranker none,bm25-wsum,bm25-rrf)
on the 257 questions of tests/data/stdlib_eval.jsonl, reordering the top 30 of the hybrid first
stage (dense + corpus-wide BM25, wsum 0.3; standard-library corpus, 8,468 chunks; 2-core CPU):

    candidate   what it does                                    R@1    R@5    R@10   MRR@10  ms/query
    none        first-stage order (hybrid)                      0.467  0.786  0.868  0.596     0
    bm25-wsum   0.6 first-stage + 0.4 candidate-set BM25        0.432  0.743  0.829  0.566     2.2
    bm25-rrf    reciprocal-rank fusion of the two rankings      0.397  0.724  0.829  0.544     2.1

Since the first stage fuses BM25 over the whole corpus, BM25 over the candidates only adds a
second, noisier vote for the same terms: both lexical rerankers lower recall@10, so the default
is `none` (the first-stage order, cut to top_k). On the earlier 155-document corpus, before the
hybrid first stage, bm25-wsum was the best (MRR@10 0.862 -> 0.896) and MaxSim over MiniLM token
states (`maxsim`, `maxsim-rrf`) added nothing for ~1.3 s a query; both stay available by name.
A CrossEncoder directory in the reranker's `checkpoint` parameter replaces the default.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from tritonrag.compile.onnx_export import OnnxRuntime, choose_runtime, read_meta
from tritonrag.errors import InvalidInput
from tritonrag.paths import onnx_dir
from tritonrag.retrieval.corpus import passage_text
from tritonrag.retrieval.cross_encoder import CrossEncoderScore, pair_features
from tritonrag.retrieval.embedder import Embedder, TorchRuntime
from tritonrag.retrieval.retriever import Hit

log = logging.getLogger(__name__)

DEFAULT = "none"
CANDIDATES = ("none", "bm25-rrf", "bm25-wsum", "maxsim", "maxsim-rrf")
RRF_K = 60  # the usual constant of reciprocal-rank fusion (Cormack et al. 2009)

# English function words that carry no topic; Python keywords (is, in, if, for, with, not, ...) are kept.
_STOP = frozenset(
    "a an the of to how do does did i my me we you your what which who when where why can could should "
    "would it its this that these those be been being are was were has have had there their they them "
    "on at by into about get use using used way some any than then so such also only just one will am "
    "but make want need let".split()
)
_TERM = re.compile(r"[a-z0-9]+")


class Scorer(Protocol):
    """Scores each candidate of each query; higher is better."""

    def score_many(self, queries: Sequence[str], hits_lists: Sequence[Sequence[Hit]]) -> list[list[float]]: ...


def terms(text: str) -> list[str]:
    """Lower-case alphanumeric terms, English function words removed."""
    return [t for t in _TERM.findall(text.lower()) if t not in _STOP]


def bm25(query: str, passages: Sequence[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Okapi BM25 of query against passages, IDF taken over the passages themselves."""
    docs = [Counter(terms(p)) for p in passages]
    if not docs:
        return []
    lengths = [sum(d.values()) for d in docs]
    avg = max(sum(lengths) / len(docs), 1e-9)
    df = {t: sum(1 for d in docs if t in d) for t in set(terms(query))}
    idf = {t: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for t, n in df.items() if n}
    return [
        sum(w * doc[t] * (k1 + 1) / (doc[t] + k1 * (1 - b + b * length / avg)) for t, w in idf.items() if t in doc)
        for doc, length in zip(docs, lengths)
    ]


def ranks(scores: Sequence[float]) -> list[int]:
    """1-based rank of each score (ties keep input order)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    out = [0] * len(scores)
    for rank, i in enumerate(order, start=1):
        out[i] = rank
    return out


def rrf(*rankings: Sequence[int], k: int = RRF_K) -> list[float]:
    """Reciprocal-rank fusion: sum over rankings of 1 / (k + rank)."""
    return [sum(1.0 / (k + r[i]) for r in rankings) for i in range(len(rankings[0]))]


def minmax(scores: Sequence[float]) -> np.ndarray:
    """Scale scores to [0, 1] (all zeros when they are all equal)."""
    arr = np.asarray(scores, dtype=np.float64)
    span = arr.max() - arr.min() if len(arr) else 0.0
    return (arr - arr.min()) / span if span > 0 else np.zeros_like(arr)


def _texts(hits: Sequence[Hit]) -> list[str]:
    return [passage_text(h.passage.title, h.passage.text) for h in hits]


class DenseScorer:
    """Keeps the first-stage score: reranking with it changes nothing."""

    def score_many(self, queries, hits_lists):
        return [[h.score for h in hits] for hits in hits_lists]


class Bm25FusionScorer:
    """Fuses the dense score with BM25 over the candidate set ('rrf' ranks or 'wsum' weighted min-max)."""

    def __init__(self, mode: str = "rrf", weight: float = 0.4) -> None:
        if mode not in ("rrf", "wsum"):
            raise InvalidInput(f"mode must be rrf or wsum, got {mode!r}")
        self.mode, self.weight = mode, weight

    def score_many(self, queries, hits_lists):
        return [self._score(q, hits) for q, hits in zip(queries, hits_lists)]

    def _score(self, query: str, hits: Sequence[Hit]) -> list[float]:
        if not hits:
            return []
        dense = [h.score for h in hits]
        lexical = bm25(query, _texts(hits))
        if self.mode == "rrf":
            return rrf(ranks(dense), ranks(lexical))
        return list((1 - self.weight) * minmax(dense) + self.weight * minmax(lexical))


class MaxSimScorer:
    """ColBERT-style late interaction: mean over query tokens of the best cosine to any passage token.

    Uses the MiniLM encoder's token states (it was not trained for this). Passage token states
    are cached by passage id (least recently used beyond cache_size).
    """

    def __init__(self, embedder=None, fuse: bool = False, cache_size: int = 4096) -> None:
        if embedder is None:
            embedder = Embedder()
        self.embedder, self.fuse, self.cache_size = embedder, fuse, cache_size
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def score_many(self, queries, hits_lists):
        return [self._score(q, hits) for q, hits in zip(queries, hits_lists)]

    def _score(self, query: str, hits: Sequence[Hit]) -> list[float]:
        if not hits:
            return []
        q = self._token_vectors([query])[0]
        self._fill_cache(hits)
        maxsim = [float((q @ self._cache[h.passage.id].T).max(axis=1).mean()) for h in hits]
        if not self.fuse:
            return maxsim
        return rrf(ranks([h.score for h in hits]), ranks(bm25(query, _texts(hits))), ranks(maxsim))

    def _fill_cache(self, hits: Sequence[Hit]) -> None:
        missing = [h for h in hits if h.passage.id not in self._cache]
        for first in range(0, len(missing), 16):
            batch = missing[first : first + 16]
            for hit, vectors in zip(batch, self._token_vectors(_texts(batch))):
                self._cache[hit.passage.id] = vectors
        for h in hits:
            self._cache.move_to_end(h.passage.id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _token_vectors(self, texts: list[str]) -> list[np.ndarray]:
        """Unit token vectors of each text, [CLS]/[SEP]/padding dropped."""
        tokens = self.embedder.tokenize(texts)
        states = self.embedder.token_states(tokens["input_ids"], tokens["attention_mask"]).astype(np.float32)
        states /= np.linalg.norm(states, axis=-1, keepdims=True).clip(min=1e-9)
        out = []
        for row, mask in zip(states, tokens["attention_mask"]):
            length = int(mask.sum())
            out.append(row[1 : max(length - 1, 2)].astype(np.float32))
        return out


def default_cross_encoder_onnx_path() -> Path:
    """Where build/export_onnx.py writes the reranker graph."""
    return onnx_dir() / "reranker" / "model.onnx"


class CrossEncoderScorer:
    """A sentence-transformers CrossEncoder checkpoint directory scoring (query, passage) pairs.

    runtime: torch (CrossEncoderScore) | onnxruntime (its exported graph, whose meta.json gives
    the tokenizer's max_length) | tensorrt, falling back with a logged reason like the Embedder.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        batch_size: int = 32,
        runtime: str = "torch",
        onnx_path: str | Path | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.path, self.batch_size = Path(path), batch_size
        self.onnx_path = Path(onnx_path) if onnx_path else default_cross_encoder_onnx_path()
        self.runtime_choice = choose_runtime(runtime, device, self.onnx_path, self.path, logger=log)
        if self.runtime_choice.name == "onnxruntime":
            self.runtime = OnnxRuntime(self.onnx_path, device)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.max_length = int(read_meta(self.onnx_path.parent)["max_length"])
        else:
            module = CrossEncoderScore.load(self.path, device)
            self.runtime = TorchRuntime(module, device)
            self.tokenizer, self.max_length = module.tokenizer, module.max_length

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """float32 [N] scores, in batches of similar length (longest first, so each pads little)."""
        out = np.zeros(len(pairs), dtype=np.float32)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for first in range(0, len(order), self.batch_size):
            batch = order[first : first + self.batch_size]
            feeds = pair_features(self.tokenizer, [pairs[i] for i in batch], self.max_length)
            out[batch] = self.runtime.run(feeds, ("score",))["score"]
        return out

    def score_many(self, queries, hits_lists):
        flat = self.score_pairs([(q, t) for q, hits in zip(queries, hits_lists) for t in _texts(hits)])
        out, at = [], 0
        for hits in hits_lists:
            out.append([float(s) for s in flat[at : at + len(hits)]])
            at += len(hits)
        return out


class Reranker:
    """Reorders hits by a Scorer and keeps the best top_n; the new score replaces the old one."""

    def __init__(self, scorer: Scorer, name: str) -> None:
        self.scorer, self.name = scorer, name

    @classmethod
    def from_config(
        cls,
        checkpoint: str | None = None,
        *,
        embedder=None,
        device: str = "cpu",
        batch_size: int = 32,
        runtime: str = "torch",
        onnx_path: str | Path | None = None,
    ) -> Reranker:
        """None/'default' -> the measured default; 'none' or a CANDIDATES name; else a CrossEncoder directory.

        runtime and onnx_path apply to a CrossEncoder (its exported graph) and to the embedder
        MaxSim builds when none is given (the embedder's own default graph).
        """
        name = (checkpoint or "default").strip()
        name = DEFAULT if name == "default" else name
        if name in CANDIDATES:
            if embedder is None and name.startswith("maxsim"):
                embedder = Embedder(device=device, runtime=runtime)
            return cls(_candidate(name, embedder), name)
        path = Path(name).expanduser()
        if not path.is_dir():
            raise InvalidInput(
                f"reranker {checkpoint!r} is neither one of {('default',) + CANDIDATES} nor a CrossEncoder directory"
            )
        return cls(CrossEncoderScorer(path, device, batch_size, runtime, onnx_path), f"cross-encoder:{path.name}")

    @property
    def runtime_choice(self):
        """The RuntimeChoice of a neural scorer (CrossEncoder, MaxSim's embedder); None for the lexical ones."""
        owner = self.scorer if hasattr(self.scorer, "runtime_choice") else getattr(self.scorer, "embedder", None)
        return getattr(owner, "runtime_choice", None)

    def rerank(self, query: str, hits: list[Hit], top_n: int) -> list[Hit]:
        """The top_n of hits for one query, best first, with the reranker's scores."""
        return self.rerank_many([query], [hits], top_n)[0]

    def rerank_many(self, queries: Sequence[str], hits_lists: Sequence[list[Hit]], top_n: int) -> list[list[Hit]]:
        """rerank for a batch of queries (one scorer call, so a CrossEncoder batches all pairs)."""
        if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
            raise InvalidInput(f"top_n must be a positive integer, got {top_n!r}")
        if len(queries) != len(hits_lists):
            raise InvalidInput(f"{len(queries)} queries but {len(hits_lists)} hit lists")
        scores = self.scorer.score_many(list(queries), [list(h) for h in hits_lists])
        return [_sorted(hits, s, int(top_n)) for hits, s in zip(hits_lists, scores)]


def _sorted(hits: Sequence[Hit], scores: Sequence[float], top_n: int) -> list[Hit]:
    order = sorted(range(len(hits)), key=lambda i: -scores[i])  # stable: ties keep first-stage order
    return [Hit(hits[i].passage, float(scores[i])) for i in order[:top_n]]


def _candidate(name: str, embedder) -> Scorer:
    if name == "none":
        return DenseScorer()
    if name.startswith("bm25"):
        return Bm25FusionScorer(name.split("-")[1])
    return MaxSimScorer(embedder, fuse=name == "maxsim-rrf")
