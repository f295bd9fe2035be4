"""ONNX exports of the retrieval stages: the embedder (all-MiniLM-L6-v2 -> mean-pooled unit `embedding`
and `token_states`) and any sentence-transformers CrossEncoder (-> `score`), parity-checked against torch;
and the embedder's TensorRT profile axes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from tritonrag.compile.onnx_export import (
    GRAPH_FILE,
    OnnxRuntime,
    check,
    export_module,
    max_abs_diff,
    source_fingerprint,
    staging,
    write_meta,
)
from tritonrag.compile.trt_build import DimRange
from tritonrag.retrieval.cross_encoder import CrossEncoderScore, pair_features
from tritonrag.retrieval.embedder import Embedder, SentenceEmbedding

# Parity tolerances, float32 on the CPU (measured: embeddings ~3e-7, token states ~3e-6, scores ~1e-7).
EMBEDDING_ATOL = 1e-5
TOKEN_STATES_ATOL = 1e-4
SCORE_ATOL = 1e-5


# Ragged parity batch: one word to past the 256-token cut, so padding and truncation are covered.
PARITY_TEXTS = (
    "x",
    "How do I read a file line by line?",
    "What does the with statement do, and how does a context manager's __exit__ see an exception?",
    "The for statement iterates over the elements of a sequence or other iterable object. " * 30,
)
PARITY_PASSAGES = (
    "Use open() in a with statement and iterate over the file object.",
    "str.strip() returns a copy of the string with leading and trailing whitespace removed.",
    "A context manager defines __enter__ and __exit__; __exit__ receives the exception type, value and traceback.",
    "Loops: break leaves the loop early and continue skips to the next iteration. " * 40,
)


def export_embedder(model_dir: Path, out_dir: Path, max_seq_length: int = 256) -> dict:
    """all-MiniLM-L6-v2 -> out_dir/model.onnx: (input_ids, attention_mask) [batch, seq] int64 ->
    embedding [batch, 384] (masked mean, L2-normalised: Embedder.embed_tokens) and
    token_states [batch, seq, 384] (the MaxSim reranker's input). Returns meta.json's content.
    """
    started = time.perf_counter()
    embedder = Embedder(model_dir, max_seq_length=max_seq_length)
    module = SentenceEmbedding.load(embedder.model_dir)
    example = _torch_feeds(embedder.tokenize(PARITY_TEXTS[1:3]))
    with staging(out_dir) as folder:
        path = export_module(
            module,
            example,
            folder / GRAPH_FILE,
            SentenceEmbedding.output_names,
            {name: {0: "batch", 1: "seq"} for name in SentenceEmbedding.input_names},
        )
        check(path)
        tokens = embedder.tokenize(PARITY_TEXTS)
        want = _run_torch(module, tokens)
        got = OnnxRuntime(path).run(tokens, SentenceEmbedding.output_names)
        mask = tokens["attention_mask"]
        parity = _parity(
            {
                "embedding": (max_abs_diff(got["embedding"], want["embedding"]), EMBEDDING_ATOL),
                "token_states": (max_abs_diff(got["token_states"], want["token_states"], mask), TOKEN_STATES_ATOL),
            },
            f"{len(PARITY_TEXTS)} texts of {mask.sum(1).tolist()} tokens; token_states over unpadded positions",
        )
        return write_meta(
            path,
            "embedder",
            source=source_fingerprint(embedder.model_dir),
            parity=parity,
            extra={"max_seq_length": max_seq_length},
            export_seconds=time.perf_counter() - started,
        )


def export_cross_encoder(checkpoint: Path, out_dir: Path) -> dict:
    """A sentence-transformers CrossEncoder directory -> out_dir/model.onnx: input_ids, attention_mask
    (and token_type_ids when its tokenizer makes them) [batch, seq] int64 -> score [batch], the
    value CrossEncoder.predict gives (activation applied; the last label of a multi-label head).
    """
    started = time.perf_counter()
    module = CrossEncoderScore.load(checkpoint)
    example_pairs = list(zip(PARITY_TEXTS[1:3], PARITY_PASSAGES[1:3]))
    example = _torch_feeds(pair_features(module.tokenizer, example_pairs, module.max_length))
    with staging(out_dir) as folder:
        path = export_module(
            module,
            example,
            folder / GRAPH_FILE,
            ("score",),
            {name: {0: "batch", 1: "seq"} for name in module.input_names},
        )
        check(path)
        pairs = [(q, p) for q in PARITY_TEXTS for p in PARITY_PASSAGES]
        feeds = pair_features(module.tokenizer, pairs, module.max_length)
        want = _run_torch(module, feeds)["score"]
        got = OnnxRuntime(path).run(feeds, ("score",))["score"]
        parity = _parity(
            {"score": (max_abs_diff(got, want), SCORE_ATOL)},
            f"{len(pairs)} (query, passage) pairs of up to {feeds['attention_mask'].shape[1]} tokens",
        )
        parity["same_order"] = bool((np.argsort(-got, kind="stable") == np.argsort(-want, kind="stable")).all())
        return write_meta(
            path,
            "reranker",
            source=source_fingerprint(checkpoint),
            parity=parity,
            extra={"max_length": module.max_length, "activation": module.activation_name},
            export_seconds=time.perf_counter() - started,
        )


def _torch_feeds(features: Mapping[str, np.ndarray]) -> dict:
    return {name: torch.as_tensor(value) for name, value in features.items()}


def _run_torch(module, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        values = module(**_torch_feeds({n: features[n] for n in module.input_names}))
    return {name: v.float().numpy() for name, v in zip(module.output_names, values)}


def _parity(measured: Mapping[str, tuple[float, float]], batch: str) -> dict:
    """The parity record; a difference above its tolerance raises (inside `staging`: nothing is written)."""
    parity = {
        "reference": "torch (float32, cpu)",
        "batch": batch,
        "max_abs_diff": {k: d for k, (d, _) in measured.items()},
        "tolerance": {k: t for k, (_, t) in measured.items()},
    }
    over = {k: d for k, (d, t) in measured.items() if not d <= t}
    if over:
        raise RuntimeError(f"ONNX Runtime differs from torch beyond tolerance: {over}; no graph written")
    return parity


def embedder_dims(max_batch_size: int, max_tokens: int) -> dict[str, DimRange]:
    """Embedder axes: batch up to Triton's max_batch_size; tokens up to the tokenizer's cap.

    opt: a full dynamic batch (batches fill up under load, when speed matters) of queries a
    quarter of the token cap long (questions are short; the cap is for indexing passages).
    """
    if max_batch_size < 1 or max_tokens < 1:
        raise ValueError(f"embedder max_batch_size and max_tokens must be >= 1, got {max_batch_size}, {max_tokens}")
    batch = DimRange(1, max_batch_size, max_batch_size)
    tokens = DimRange(1, max(1, max_tokens // 4), max_tokens)
    return {"batch": batch, "seq": tokens}  # the axis names export_embedder gives
