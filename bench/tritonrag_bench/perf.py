"""`make perf`: genai-perf against the running server's LLM model, a concurrency sweep, its tables and artifacts kept.

python -m tritonrag_bench.perf [--url 127.0.0.1:8001] [--concurrency 1,2,4,8] [--input-tokens 128] [--output-tokens 64]

Each level is one `genai-perf profile` (streaming, synthetic prompts of a fixed length,
exactly `--output-tokens` per request), whose own table is printed as it finishes; its
artifacts go to `artifacts/perf/c<N>/`. A summary of every level follows, also written
to `artifacts/perf/summary.json` and, as the README's table, `artifacts/perf/summary.md`.
It cannot load a server whose inference is locked (tritonrag.triton.inference_key): perf_analyzer 2.51
sends its `-H` headers on HTTP only, and streaming is gRPC only. With $TRITONRAG_INFERENCE_KEY set it refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import requests

from tritonrag import metrics
from tritonrag.defaults import LLM_MODEL
from tritonrag.paths import artifacts_dir, generator_weights_dir
from tritonrag.triton.inference_key import INFERENCE_KEY_ENV, inference_key
from tritonrag_bench.perf_tools import GenaiPerfRun, missing_tools, summary_row
from tritonrag_clients.prom import parse_metrics, total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tritonrag_bench.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="the server's HTTP address (readiness)")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics", help="its /metrics (token check)")
    parser.add_argument("--model", default=LLM_MODEL)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--requests-per-stream", type=int, default=4, help="requests per level: this x concurrency")
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--out", type=Path, default=artifacts_dir() / "perf")
    return parser.parse_args(argv)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| concurrency | requests | output tok/s | requests/s | TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) "
        "| output tokens (genai-perf) min / avg / max | server: tokens per request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttft, itl = (" / ".join(f"{v:.0f}" for v in r[key]) for key in ("ttft_ms", "itl_ms"))
        out = " / ".join(
            f"{v:g}" for v in (r["output_tokens"][0], round(r["output_tokens"][1], 1), r["output_tokens"][2])
        )
        server = "-" if r.get("server_tokens_per_request") is None else f"{r['server_tokens_per_request']:g}"
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['output_tok_s']:.1f} | {r['request_s']:.2f} "
            f"| {ttft} | {itl} | {out} | {server} |"
        )
    return "\n".join(lines)


def generated_tokens(metrics_url: str) -> float | None:
    """The server's count of generated tokens (vllm:generation_tokens_total), None if /metrics is unreachable."""
    try:
        text = requests.get(metrics_url, timeout=10).text
    except requests.RequestException:
        return None
    return total(parse_metrics(text), metrics.VLLM_GENERATION_TOKENS.name)


def server_ready(http_url: str, model: str) -> str | None:
    try:
        response = requests.get(f"http://{http_url}/v2/models/{model}/ready", timeout=10)
    except requests.RequestException as exc:
        return f"no server at {http_url} ({exc.__class__.__name__}): start one with `make serve`"
    return None if response.status_code == 200 else f"model {model!r} is not ready on {http_url}"


def inference_locked() -> str | None:
    """perf_analyzer 2.51 cannot send the inference key on gRPC (its -H is HTTP only): say so up front."""
    if inference_key() is None:
        return None
    return (
        f"{INFERENCE_KEY_ENV} is set, and perf_analyzer 2.51 sends headers on HTTP only (streaming is gRPC): "
        "run it against a server whose inference is open"
    )


def machine() -> dict:
    """The client machine (the server's, when both run here) and how busy it was."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return {"cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(), "loadavg": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = inference_locked() or missing_tools() or server_ready(args.http_url, args.model)
    if problem:
        print(f"make perf: {problem}", file=sys.stderr)
        return 2
    before = machine()
    rows = []
    for c in (int(level) for level in args.concurrency.split(",")):
        run = GenaiPerfRun(
            url=args.url,
            model=args.model,
            tokenizer=generator_weights_dir(),
            concurrency=c,
            input_tokens=args.input_tokens,
            output_tokens=args.output_tokens,
            request_count=max(args.min_requests, args.requests_per_stream * c),
            artifact_dir=args.out / f"c{c}",
        )
        print(f"\n== genai-perf, concurrency {c}: {' '.join(run.command())}", flush=True)
        tokens = generated_tokens(args.metrics_url)
        row = summary_row(run.run(), c)
        after = generated_tokens(args.metrics_url)
        if tokens is not None and after is not None:  # warm-up requests (one per stream) included
            row["server_tokens_per_request"] = (after - tokens) / (run.request_count + c)
        rows.append(row)
    table = markdown_table(rows)
    print(f"\n{args.model} through genai-perf ({args.input_tokens} prompt tokens, {args.output_tokens} output tokens):")
    print(table)
    summary = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": before,
        "loadavg_after": os.getloadavg(),
        "args": vars(args),
        "levels": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (args.out / "summary.md").write_text(table + "\n")
    print(f"\nartifacts: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
