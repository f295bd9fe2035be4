"""The prefix-cache scenario: TTFT of requests sharing a long prefix, with the prefix cache on and off."""

from __future__ import annotations

import gc
import random
import time

import numpy as np

from tritonrag.engine.factory import build_engine
from tritonrag_bench.engine import engine_config, greedy, warm_engine
from tritonrag_bench.records import percentiles
from tritonrag_bench.workload import BenchSettings, make_text


def bench_prefix(settings: BenchSettings, tokenizer, corpus: list[int]) -> dict:
    """TTFT of requests sharing a long prefix, one at a time, with the prefix cache on and off."""
    rng = random.Random(settings.seed + 7)
    prefix_ids = make_text(tokenizer, corpus, rng, settings.prefix_len + 8)[1][: settings.prefix_len]
    prompts = [
        prefix_ids + make_text(tokenizer, corpus, rng, settings.prefix_suffix_len)[1]
        for _ in range(settings.prefix_requests + 1)
    ]
    kv_bytes = min(settings.kv_cache_memory_bytes, 256 * 2**20)
    out = {
        "prefix_tokens": len(prefix_ids),
        "suffix_tokens": settings.prefix_suffix_len,
        "num_requests": settings.prefix_requests,
    }
    for mode, caching in (("on", True), ("off", False)):
        engine = build_engine(engine_config(settings, enable_prefix_caching=caching, kv_cache_memory_bytes=kv_bytes))
        warm_engine(engine, tokenizer, corpus)
        ttfts, cached = [], []
        for i, prompt in enumerate(prompts):  # prompt 0 warms the cache (on) / is discarded (off)
            ttft, num_cached = _one_ttft(engine, f"prefix-{mode}-{i}", prompt)
            if i:
                ttfts.append(ttft)
                cached.append(num_cached)
        out[mode] = {"ttft_s": percentiles(ttfts), "cached_tokens_mean": float(np.mean(cached))}
        del engine
        gc.collect()
    out["ttft_saving_p50"] = 1 - out["on"]["ttft_s"]["p50"] / out["off"]["ttft_s"]["p50"]
    out["ttft_saving_mean"] = 1 - out["on"]["ttft_s"]["mean"] / out["off"]["ttft_s"]["mean"]
    return out


def _one_ttft(engine, request_id: str, prompt: list[int]) -> tuple[float, int]:
    start = time.monotonic()
    engine.add_request(request_id, prompt, greedy(1))
    first, cached = None, 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.new_token_ids and first is None:
                first = time.monotonic()
            if out.finished:
                cached = out.num_cached_tokens
    return first - start, cached
