"""What a run measures: its settings, and the seeded requests of each concurrency level cut from real text."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pydoc_data.topics import topics

import numpy as np


@dataclass
class BenchSettings:
    """What the run measures; `quick` shrinks everything for a smoke run."""

    model_dir: str
    dtype: str = "float32"
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    num_requests: int = 48  # cap on requests per level: min(max(4, 2 x concurrency), cap)
    targets: list[str] = field(default_factory=lambda: ["engine", "triton", "hf"])
    prompt_len: tuple[int, int] = (32, 1024)
    output_len: tuple[int, int] = (16, 256)
    prefix_len: int = 512
    prefix_suffix_len: int = 48
    prefix_requests: int = 8
    seed: int = 0
    block_size: int = 16
    max_model_len: int = 2048
    max_num_batched_tokens: int = 512
    kv_cache_memory_bytes: int = 2 * 2**30
    hf_cache: str = "static"  # HF generate()'s cache: "static" (preallocated) or "dynamic"
    runtimes: list[str] = field(default_factory=lambda: ["torch"])  # the runtimes target compares these
    onnx_path: str = ""  # the step graph for runtime onnxruntime
    runtime_batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    runtime_context: int = 300  # prompt tokens of each sequence in the decode-step measurement
    runtime_steps: int = 10  # timed decode steps per batch
    runtime_concurrency: int = 8  # end-to-end tok/s level
    runtime_threads: int = 0  # intra-op threads of both runtimes; 0 = torch's current count
    quick: bool = False

    def requests_at(self, concurrency: int) -> int:
        return min(max(4, 2 * concurrency), self.num_requests)

    @classmethod
    def quick_settings(cls, model_dir: str, **overrides) -> BenchSettings:
        base = dict(
            concurrency=[1, 4],
            num_requests=4,
            prompt_len=(16, 96),
            output_len=(4, 12),
            prefix_len=64,
            prefix_suffix_len=16,
            prefix_requests=2,
            max_model_len=256,
            kv_cache_memory_bytes=64 * 2**20,
            quick=True,
            runtime_batches=[1, 4],
            runtime_context=48,
            runtime_steps=3,
            runtime_concurrency=4,
        )
        base.update(overrides)
        return cls(model_dir=model_dir, **base)


@dataclass
class BenchRequest:
    request_id: str
    prompt_text: str
    prompt_ids: list[int]
    max_tokens: int


def corpus_token_ids(tokenizer) -> list[int]:
    """Real English + code text to cut prompts from: the Python docs' topic pages."""
    return tokenizer("\n\n".join(topics[key] for key in sorted(topics)))["input_ids"]


def make_text(tokenizer, corpus: list[int], rng: random.Random, length: int) -> tuple[str, list[int]]:
    """A corpus slice of about `length` tokens, as text and as the ids that text tokenizes to."""
    start = rng.randrange(0, len(corpus) - length)
    text = tokenizer.decode(corpus[start : start + length])
    return text, tokenizer(text)["input_ids"]


def make_workload(tokenizer, corpus: list[int], settings: BenchSettings, concurrency: int) -> list[BenchRequest]:
    """The requests of one level, seeded by (seed, concurrency)."""
    rng = random.Random(settings.seed * 100_003 + concurrency)
    requests = []
    for i in range(settings.requests_at(concurrency)):
        text, ids = make_text(tokenizer, corpus, rng, rng.randint(*settings.prompt_len))
        requests.append(BenchRequest(f"c{concurrency}-{i}", text, ids, rng.randint(*settings.output_len)))
    return requests


def workload_stats(requests: list[BenchRequest]) -> dict:
    """Request count, prompt and output lengths (min, mean, max) of one level."""
    prompts, outputs = [len(r.prompt_ids) for r in requests], [r.max_tokens for r in requests]
    return {
        "num_requests": len(requests),
        "prompt_tokens": {"min": min(prompts), "mean": float(np.mean(prompts)), "max": max(prompts)},
        "output_tokens": {"min": min(outputs), "mean": float(np.mean(outputs)), "max": max(outputs)},
    }
