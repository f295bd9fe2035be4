"""The triton target: a tritonserver with only the `generator` model, driven over gRPC streams, one per request."""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

from tritonrag import metrics
from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir
from tritonrag.triton.server import TritonServer
from tritonrag_bench.client_threads import run_client_threads
from tritonrag_bench.engine import engine_config
from tritonrag_bench.machine import CpuMeter, session_cpu_s
from tritonrag_bench.records import RequestRecord
from tritonrag_bench.terminal import console, say_level
from tritonrag_bench.workload import BenchRequest, BenchSettings
from tritonrag_clients.prom import parse_metrics, total
from tritonrag_clients.streaming import StreamingClient, event_from_result, generator_inputs

SERVER_HISTOGRAMS = {"ttft_s": metrics.TTFT.name, "itl_s": metrics.ITL.name, "e2e_s": metrics.E2E.name}


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
        "dtype": config.dtype,
        "block_size": config.block_size,
        "kv_cache_memory_bytes": config.kv_cache_memory_bytes,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "max_model_len": config.max_model_len,
        "enable_prefix_caching": "true",
        "enable_chunked_prefill": "true",
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


class CountingClient(StreamingClient):
    """A StreamingClient whose events also carry the final response's `num_output_tokens`."""

    def _on_response(self, result=None, error=None) -> None:
        request_id = result.get_response().id if result is not None else None
        target = self.events.get(request_id)
        if target is None and len(self.events) == 1:
            target = next(iter(self.events.values()))
        if target is None:
            return
        event = event_from_result(result, error)
        event.num_output_tokens = None
        if result is not None and any(o.name == "num_output_tokens" for o in result.get_response().outputs):
            event.num_output_tokens = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
        target.put(event)


def run_triton_level(url: str, requests: list[BenchRequest], concurrency: int, label: str) -> dict:
    """`concurrency` client threads, each with its own gRPC stream."""

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

    return run_client_threads(requests, concurrency, label, one, lambda: CountingClient(url))


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
    results = {}
    with TritonServer.on_free_ports(model_repository=repo, log_path=root / "triton.log") as server:
        for c, requests in workloads.items():
            before = server_histograms(server.metrics_url)
            results[str(c)] = run_triton_level(server.grpc_url, requests, c, f"triton  c={c}")
            results[str(c)]["server_side_mean_s"] = server_side_means(before, server_histograms(server.metrics_url))
            say_level("triton", c, results[str(c)])
        if meter is not None and server.process is not None:  # the server runs in its own session
            meter.extra_own_s = session_cpu_s(server.process.pid)
    return results
