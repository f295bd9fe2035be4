"""The runtimes target: the same engine on torch and on compiled runtimes (decode steps, prefill, end to end)."""

from __future__ import annotations

import gc
import random
from functools import partial

import torch

from tritonrag.engine.factory import build_engine, choose_runtime
from tritonrag_bench.engine import engine_config, greedy, run_engine_level, warm_engine
from tritonrag_bench.machine import timed
from tritonrag_bench.records import percentiles
from tritonrag_bench.terminal import console, ms, progress_bar
from tritonrag_bench.workload import BenchSettings, make_text, make_workload


def bench_runtimes(settings: BenchSettings, tokenizer, corpus: list[int]) -> dict:
    """Decode step latency, prefill and end-to-end tok/s per runtime, and their ratios to torch.

    All engines are built first and the step and prefill timings alternate between them, so
    a neighbour's load on this shared machine hits every runtime alike; the end-to-end
    levels run one engine after the other.
    """
    runtimes = ["torch"] + [r for r in settings.runtimes if r != "torch"]
    rng = random.Random(settings.seed + 11)
    contexts = [
        make_text(tokenizer, corpus, rng, settings.runtime_context + 8)[1][: settings.runtime_context]
        for _ in range(max(settings.runtime_batches))
    ]
    threads, torch_threads = settings.runtime_threads or torch.get_num_threads(), torch.get_num_threads()
    out: dict = {
        "threads": threads,
        "context_tokens": settings.runtime_context,
        "concurrency": settings.runtime_concurrency,
        "runtimes": {},
    }
    try:
        engines = {}
        for runtime in runtimes:
            engine, out["runtimes"][runtime] = _runtime_engine(settings, runtime, threads)
            if engine is not None:
                warm_engine(engine, tokenizer, corpus)
                engines[runtime] = engine
        _time_runtimes(settings, engines, contexts, out["runtimes"])
        workload = make_workload(tokenizer, corpus, settings, settings.runtime_concurrency)
        for runtime, engine in engines.items():
            c = settings.runtime_concurrency
            out["runtimes"][runtime]["e2e"], _ = run_engine_level(engine, workload, c, f"{runtime[:7]:7s} c={c}")
            _say_runtime(runtime, out["runtimes"][runtime], c)
        engines.clear()
        gc.collect()
    finally:
        torch.set_num_threads(torch_threads)  # the runners set it for the process
    out["ratios_vs_torch"] = runtime_ratios(out["runtimes"])
    return out


def _runtime_engine(settings: BenchSettings, runtime: str, threads: int):
    """(engine, its result record) for one runtime; (None, "not run" record) when it cannot run here."""
    c = settings.runtime_concurrency
    config = engine_config(
        settings,
        runtime=runtime,
        onnx_path=settings.onnx_path,
        num_threads=threads,
        max_num_seqs=max(settings.runtime_batches + [c]),
        max_num_batched_tokens=max(settings.max_num_batched_tokens, *settings.runtime_batches, c),
        kv_cache_memory_bytes=min(settings.kv_cache_memory_bytes, 512 * 2**20),
        enable_prefix_caching=False,
    )
    choice = choose_runtime(config)
    if choice.fell_back:
        console.print(f"[red]runtimes: {runtime} cannot run here[/red]: {choice.describe()}")
        return None, {"status": "not run", "reason": choice.describe()}
    return build_engine(config, choice), {"status": "ok"}


def _time_runtimes(settings: BenchSettings, engines: dict, contexts: list[list[int]], records: dict) -> None:
    """Decode steps per batch size and prefills, one engine after the other within each round."""
    for record in (records[name] for name in engines):
        record["decode_step_s"] = {}
    with progress_bar() as bar:
        task = bar.add_task("runtimes: decode steps, prefill", total=len(settings.runtime_batches) + 1)
        for b in settings.runtime_batches:
            ids = {name: start_decodes(engine, contexts[:b]) for name, engine in engines.items()}
            times: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(settings.runtime_steps):
                for name, engine in engines.items():
                    times[name].append(timed(engine.step))
            for name, engine in engines.items():
                for request_id in ids[name]:
                    engine.abort(request_id)
                records[name]["decode_step_s"][str(b)] = percentiles(times[name])
            bar.advance(task)
        prefills: dict[str, list[float]] = {name: [] for name in engines}
        for i in range(3):
            for name, engine in engines.items():
                prefills[name].append(timed(partial(_prefill, engine, f"prefill-{i}", contexts[0])))
        for name in engines:
            records[name]["prefill_s"] = percentiles(prefills[name])
        bar.advance(task)


def start_decodes(engine, prompts: list[list[int]]) -> list[str]:
    """Add the prompts and step until every one decodes (untimed); returns their request ids.

    max_tokens is generous: sequences admitted first decode while later ones prefill, and
    must not finish before the timed steps.
    """
    ids = [f"decode-{len(prompts)}-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, greedy(engine.config.max_model_len - len(prompt) - 1))
    sched = engine.scheduler
    while sched.waiting or any(not seq.output_token_ids for seq in sched.running):
        engine.step()
    if len(sched.running) != len(prompts):
        raise RuntimeError(
            f"{len(sched.running)} of {len(prompts)} sequences are decoding: raise max_num_seqs or the KV pool"
        )
    return ids


def _prefill(engine, request_id: str, prompt: list[int]) -> None:
    """The steps that prefill `prompt` alone (prefix cache off: nothing to reuse) and sample once."""
    engine.add_request(request_id, prompt, greedy(1))
    while engine.has_unfinished():
        engine.step()


def _say_runtime(runtime: str, record: dict, c: int) -> None:
    steps, prefill, e2e = record["decode_step_s"], record["prefill_s"], record["e2e"]
    console.print(
        f"  {runtime}: decode step p50 "
        + ", ".join(f"B={b} {ms(v['p50'])} ms" for b, v in steps.items())
        + f"; prefill {ms(prefill['p50'])} ms; c={c} {e2e['output_tok_s']:.1f} out tok/s"
    )


def runtime_ratios(runtimes: dict) -> dict:
    """Per runtime: torch's decode step time / its own (a speedup) and its tok/s / torch's."""
    base = runtimes.get("torch", {})
    ratios = {}
    for name, r in runtimes.items():
        if name == "torch" or r.get("status") != "ok" or base.get("status") != "ok":
            continue
        ratios[name] = {
            "decode_step_speedup": {
                b: base["decode_step_s"][b]["p50"] / v["p50"] for b, v in r["decode_step_s"].items()
            },
            "prefill_speedup": base["prefill_s"]["p50"] / r["prefill_s"]["p50"],
            "e2e_tok_s_ratio": r["e2e"]["output_tok_s"] / base["e2e"]["output_tok_s"],
        }
    return ratios
