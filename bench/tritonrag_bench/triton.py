"""The triton target: a tritonserver with only the `generator` model, loaded by perf_analyzer (or our client threads).

With `.venv-perf` built (`make perf-tools`), each level is one perf_analyzer run, Triton's
standard load tool: the workload's requests as its input data (vllm_backend's interface,
streamed, each request's own max_tokens with ignore_eos), `--concurrency-range c`, and the
per-request timestamps of its profile export become the level's records. Without it, our
own closed-loop client threads send the same requests over gRPC streams.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

from tritonrag import metrics
from tritonrag.paths import artifacts_dir
from tritonrag.triton.server import TritonServer
from tritonrag_bench.client_threads import run_client_threads
from tritonrag_bench.engine import engine_config
from tritonrag_bench.machine import CpuMeter, session_cpu_s
from tritonrag_bench.perf_tools import missing_tools, perf_analyzer
from tritonrag_bench.records import RequestRecord, level_metrics
from tritonrag_bench.repository_copy import copy_generator_version_1
from tritonrag_bench.terminal import console, say_level
from tritonrag_bench.workload import BenchRequest, BenchSettings
from tritonrag_clients.prom import parse_metrics, total
from tritonrag_clients.streaming import StreamingClient, generator_inputs

SERVER_HISTOGRAMS = {"ttft_s": metrics.TTFT.name, "itl_s": metrics.ITL.name, "e2e_s": metrics.E2E.name}


def bench_model_repository(settings: BenchSettings, root: Path) -> Path:
    """artifacts/bench/model_repository with only `generator` version 1 (tritonrag_bench.repository_copy says
    why), its engine set like the in-process one."""
    repo = root / "model_repository"
    if repo.exists():
        shutil.rmtree(repo)
    config = engine_config(settings)
    values = {
        "dtype": config.dtype,
        "block_size": config.block_size,
        "kv_cache_memory_bytes": config.kv_cache_memory_bytes,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "max_model_len": config.max_model_len,
        "enable_prefix_caching": "true",
        "enable_chunked_prefill": "true",
        "prefill_order": config.prefill_order,
        "prefill_starvation_s": config.prefill_starvation_s,
        "prefill_starved_share": config.prefill_starved_share,
        "device": "cpu",
    }
    copy_generator_version_1(repo, values)
    return repo


def sampling_of(r: BenchRequest) -> dict:
    return {"max_tokens": r.max_tokens, "temperature": 0.0, "ignore_eos": True}


def run_triton_level(url: str, requests: list[BenchRequest], concurrency: int, label: str) -> dict:
    """`concurrency` client threads, each with its own gRPC stream (the fallback without perf_analyzer)."""

    def one(client, r: BenchRequest) -> RequestRecord:
        record = RequestRecord(r.request_id, len(r.prompt_ids), r.max_tokens, time.monotonic())
        inputs = generator_inputs(r.prompt_text, sampling_of(r), returns=("num_output_tokens",))
        for event in client.stream("generator", inputs, request_id=r.request_id):
            if event.error is not None:
                raise RuntimeError(f"{r.request_id}: {event.error}")
            if event.text:
                record.token_times.append(event.time)
            record.num_output_tokens += event.num_output_tokens
            if event.final:
                record.finish = event.time
        return record

    return run_client_threads(requests, concurrency, label, one, lambda: StreamingClient(url))


def perf_analyzer_input(requests: list[BenchRequest]) -> dict:
    """The workload as perf_analyzer's input data: vllm_backend's inputs, one entry per request, sent in order."""
    return {
        "data": [
            {
                "text_input": [r.prompt_text],
                "stream": [True],
                "exclude_input_in_output": [True],
                "sampling_parameters": [json.dumps(sampling_of(r))],
            }
            for r in requests
        ]
    }


def records_from_export(export: dict, requests: list[BenchRequest]) -> tuple[list[RequestRecord], float, float]:
    """perf_analyzer's per-request timestamps (ns) as our records, matched to the workload by prompt text.

    A response that carries text is a token time; each request generates its max_tokens
    (ignore_eos), which the caller checks against the server's token counter.
    """
    by_prompt: dict[str, list[BenchRequest]] = {}
    for r in requests:  # perf_analyzer sends its entries in order: a repeated prompt's requests in turn
        by_prompt.setdefault(r.prompt_text, []).append(r)
    records = []
    for measured in sorted(export["experiments"][0]["requests"], key=lambda m: m["timestamp"]):
        r = by_prompt[measured["request_inputs"]["text_input"]].pop(0)
        stamps = [t / 1e9 for t in measured["response_timestamps"]]
        record = RequestRecord(r.request_id, len(r.prompt_ids), r.max_tokens, measured["timestamp"] / 1e9)
        outputs = measured["response_outputs"]
        record.token_times = [t for t, out in zip(stamps, outputs) if out.get("text_output")]
        record.finish, record.num_output_tokens = stamps[-1], r.max_tokens
        records.append(record)
    start = min(rec.arrival for rec in records)
    return records, start, max(rec.finish for rec in records)


def run_perf_analyzer_level(server: TritonServer, requests: list[BenchRequest], concurrency: int, root: Path) -> dict:
    """One perf_analyzer run over the level's requests; every request must succeed with its max_tokens."""
    data = root / f"perf_analyzer_c{concurrency}.json"
    data.write_text(json.dumps(perf_analyzer_input(requests)))
    args = ["-m", "generator", "-i", "grpc", "--streaming", "--async", "-u", server.grpc_url]
    args += ["--concurrency-range", str(concurrency), "--request-count", str(len(requests))]
    args += ["--stability-percentage", "999", "--input-data", str(data)]
    tokens = _generated_tokens(server.metrics_url)
    console.print(f"[dim]perf_analyzer {' '.join(args)}[/dim]")
    _, export = perf_analyzer(args, root / f"perf_analyzer_c{concurrency}_export.json")
    records, start, end = records_from_export(export, requests)
    asked = sum(r.max_tokens for r in requests)
    deadline = time.monotonic() + 30
    while (grown := _generated_tokens(server.metrics_url) - tokens) != asked and time.monotonic() < deadline:
        time.sleep(0.5)
    if len(records) != len(requests) or grown != asked:
        raise RuntimeError(
            f"perf_analyzer level c={concurrency}: {len(records)} requests, {grown} tokens, asked {asked}"
        )
    return level_metrics(records, start, end) | {"load_tool": "perf_analyzer 2.51"}


def _generated_tokens(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return total(parse_metrics(text), metrics.VLLM_GENERATION_TOKENS.name)


def server_histograms(metrics_url: str, wait_s: float = 15.0) -> dict[str, tuple[float, float]] | None:
    """(sum, count) of the generator's latency histograms on the server's /metrics; None if unreachable.

    The metrics service starts a little after the server reports ready, so retry briefly.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
    samples = parse_metrics(text)
    return {
        key: (total(samples, f"{name}_sum"), total(samples, f"{name}_count")) for key, name in SERVER_HISTOGRAMS.items()
    }


def server_side_means(before: dict | None, after: dict | None) -> dict[str, float | None] | None:
    """Mean latencies the engine loop itself observed over a level (from submission, not from the client's send)."""
    if before is None or after is None:
        return None
    means = {}
    for key in SERVER_HISTOGRAMS:
        sum_s, count = (a - b for a, b in zip(after[key], before[key]))
        means[key] = sum_s / count if count else None
    return means


def bench_triton(
    settings: BenchSettings, workloads: dict[int, list[BenchRequest]], root: Path, meter: CpuMeter | None = None
) -> dict:
    """Every level against one tritonserver; the server's own latency means beside the client's numbers."""
    os.environ.setdefault("TRITONRAG_ARTIFACTS", str(artifacts_dir()))
    repo = bench_model_repository(settings, root)
    console.print(f"[dim]starting tritonserver on {repo} (log {root / 'triton.log'})[/dim]")
    unavailable = missing_tools()
    if unavailable:
        console.print(f"[yellow]triton: perf_analyzer unavailable ({unavailable}); our client threads load it[/yellow]")
    results = {}
    # Inference open on this private loopback server: perf_analyzer 2.51 cannot send a key on gRPC.
    with TritonServer.on_free_ports(model_repository=repo, log_path=root / "triton.log", inference_key=None) as server:
        for c, requests in workloads.items():
            before = server_histograms(server.metrics_url)
            if unavailable:
                results[str(c)] = run_triton_level(server.grpc_url, requests, c, f"triton  c={c}")
            else:
                results[str(c)] = run_perf_analyzer_level(server, requests, c, root)
            results[str(c)]["server_side_mean_s"] = server_side_means(before, server_histograms(server.metrics_url))
            say_level("triton", c, results[str(c)])
        if meter is not None and server.process is not None:  # the server runs in its own session
            meter.extra_own_s = session_cpu_s(server.process.pid)
    return results
