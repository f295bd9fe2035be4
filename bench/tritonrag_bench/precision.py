"""The precision target: the engine in float32 and in bfloat16 on one workload, throughput and greedy agreement."""

from __future__ import annotations

import gc

import numpy as np

from tritonrag.engine.factory import build_engine
from tritonrag_bench.engine import engine_config, run_engine_level, warm_engine
from tritonrag_bench.records import percentiles
from tritonrag_bench.terminal import console
from tritonrag_bench.workload import BenchRequest, BenchSettings


def bench_precision(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], tokenizer, corpus) -> dict:
    """The top level's workload on a float32 and a bfloat16 engine, one after the other.

    Reports each one's throughput and how far bf16's greedy outputs follow fp32's: per request,
    the share of its output before the first differing token (1.0 = identical).
    """
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
    console.print(
        f"  precision c={c}: bf16 {out['bf16_speedup']:.2f}x fp32 output tok/s; {a['identical']}/{a['requests']} "
        f"outputs identical, mean {a['mean_share_before_first_difference']:.0%} of each output before the first difference"
    )
    return out


def greedy_agreement(reference: dict[str, list[int]], other: dict[str, list[int]]) -> dict:
    """How far `other`'s outputs follow `reference`'s, request by request."""
    shares = []
    for request_id, want in reference.items():
        got = other.get(request_id, [])
        first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        shares.append(first / len(want) if want else 1.0)
    return {
        "requests": len(shares),
        "identical": sum(s == 1.0 for s in shares),
        "mean_share_before_first_difference": float(np.mean(shares)) if shares else None,
        "share_before_first_difference": percentiles(shares),
    }
