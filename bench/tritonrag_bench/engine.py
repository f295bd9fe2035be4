"""The engine target: LLMEngine in-process under a closed loop, plus the engine settings every target shares."""

from __future__ import annotations

import gc
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.factory import build_engine
from tritonrag.sampling import SamplingParams
from tritonrag_bench.kv import KVSampler
from tritonrag_bench.records import RequestRecord, level_metrics, percentiles
from tritonrag_bench.terminal import progress_bar, say_level
from tritonrag_bench.workload import BenchRequest, BenchSettings, make_text


def engine_config(settings: BenchSettings, **overrides) -> EngineConfig:
    values = dict(
        model_dir=settings.model_dir,
        dtype=settings.dtype,
        device="cpu",
        block_size=settings.block_size,
        kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
        max_num_seqs=max(settings.concurrency),
        max_num_batched_tokens=max(settings.max_num_batched_tokens, max(settings.concurrency)),
        max_model_len=settings.max_model_len,
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
    )
    values.update(overrides)
    return EngineConfig(**values)


def on_fresh_thread(fn, *args):
    """fn(*args) on a thread that ends with it, taking its OpenMP team along: the next target
    (the service's loop thread among them) then has the process's only team, as in a server
    (tritonrag.engine.serving.GenerationService says why that matters on few cores)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-target") as pool:
        return pool.submit(fn, *args).result()


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def run_engine_level(
    engine, requests: list[BenchRequest], concurrency: int, label: str, token_ids: dict[str, list[int]] | None = None
) -> tuple[dict, dict]:
    """Closed loop: keep `concurrency` requests in the engine; returns (metrics, kv summary).

    `token_ids`, if given, collects each request's output token ids by request id.
    """
    pending, live, done = deque(requests), {}, []
    kv = KVSampler(engine, engine.config.max_model_len)
    step_times: list[float] = []

    def admit() -> None:
        while pending and len(live) < concurrency:
            r = pending.popleft()
            live[r.request_id] = RequestRecord(r.request_id, len(r.prompt_ids), r.max_tokens, time.monotonic())
            engine.add_request(r.request_id, r.prompt_ids, greedy(r.max_tokens))

    with progress_bar() as bar:
        task = bar.add_task(label, total=len(requests))
        start = time.monotonic()
        admit()
        while live:
            t0 = time.monotonic()
            outputs = engine.step()
            now = time.monotonic()
            step_times.append(now - t0)
            kv.sample()
            for out in outputs:
                record = live[out.request_id]
                record.token_times.extend([now] * len(out.new_token_ids))
                if token_ids is not None:
                    token_ids.setdefault(out.request_id, []).extend(out.new_token_ids)
                if out.finished:
                    record.finish, record.num_output_tokens = now, out.num_output_tokens
                    record.num_cached_tokens = out.num_cached_tokens
                    done.append(live.pop(out.request_id))
                    bar.advance(task)
            admit()
        end = time.monotonic()
    metrics = level_metrics(done, start, end)
    metrics["num_steps"] = len(step_times)
    metrics["step_s"] = percentiles(step_times)
    metrics["prefix_cached_tokens"] = sum(r.num_cached_tokens for r in done)
    metrics["preemptions_total"] = engine.stats().num_preemptions
    return metrics, kv.summary()


def warm_engine(engine, tokenizer, corpus: list[int]) -> None:
    """One prefill chunk and a few decodes, so lazy init is not timed."""
    _, ids = make_text(tokenizer, corpus, random.Random(-1), 200)
    engine.add_request("warmup", ids, greedy(4))
    while engine.has_unfinished():
        engine.step()


def bench_engine(
    settings: BenchSettings, workloads: dict[int, list[BenchRequest]], tokenizer, corpus
) -> tuple[dict, dict]:
    """Every level on one engine, one after the other: (metrics by level, KV occupancy by level)."""
    engine = build_engine(engine_config(settings))
    warm_engine(engine, tokenizer, corpus)
    results, kv = {}, {}
    for c, requests in workloads.items():
        results[str(c)], kv[str(c)] = run_engine_level(engine, requests, c, f"engine  c={c}")
        say_level("engine", c, results[str(c)])
    del engine
    gc.collect()
    return results, kv
