"""The OpenAI test stack: one real tritonserver on a repository copy and `python -m tritonrag.openai` in front of it.

The copy cuts the embedder's dynamic-batching queue bound from 128 to 4 requests and the engine's waiting queue
to 4, so the shed-load tests fill them with a few dozen calls (conftest.py's session stack; modules that must
break their server, such as test_dead_generator.py, start their own with `running_stack`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir, generator_weights_dir, index_dir
from tritonrag.triton.server import TritonServer, free_port

API_KEY = "test-key-for-openai-tests"
EMBEDDER_QUEUE = 4
MAX_QUEUE_SIZE = re.compile(r"(max_queue_size: )(\d+)")
GENERATOR_WAITING = 4  # the engine's waiting queue, cut so that a burst of a few dozen streams overflows it
MAX_WAITING = re.compile(r'(key: "max_waiting" value: \{ string_value: ")(\d+)')


@dataclass
class Stack:
    triton: TritonServer
    base_url: str  # the OpenAI base URL, .../v1
    url: str  # the service's root (the page)
    api_key: str = API_KEY
    embedder_queue: int = EMBEDDER_QUEUE  # the embedder's queue bound on this server

    def metric(self, name: str) -> float:
        """Sum of a metric family's samples on Triton's /metrics (every model and version)."""
        text = httpx.get(self.triton.metrics_url, timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name == name or family.name + "_total" == name:
                return sum(s.value for s in family.samples if s.name == name)
        raise AssertionError(f"metric {name} is not on {self.triton.metrics_url}")

    def wait_for(self, condition, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.25)
        return False


def repository_copy(target: Path) -> Path:
    """The model repository with the embedder's queue and the engine's waiting queue cut (shed-load tests)."""
    shutil.copytree(MODEL_REPOSITORY, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    _cut(target / "embedder" / "config.pbtxt", MAX_QUEUE_SIZE, rf"\g<1>{EMBEDDER_QUEUE}")
    _cut(target / "generator" / "config.pbtxt", MAX_WAITING, rf"\g<1>{GENERATOR_WAITING}")
    return target


def _cut(config: Path, pattern: re.Pattern, replacement: str) -> None:
    text, count = pattern.subn(replacement, config.read_text())
    assert count == 1, f"{config}: no {pattern.pattern!r} to cut (the shed-load test relies on it)"
    config.write_text(text)


def start_service(triton: TritonServer, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRITONRAG_API_KEYS=API_KEY)
    command = [sys.executable, "-m", "tritonrag.openai", "--triton-url", triton.grpc_url, "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the OpenAI service exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the OpenAI service was not healthy after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


@contextmanager
def running_stack(root: Path, name: str) -> Iterator[Stack]:
    """tritonserver on a copy of the repository under `root` and the OpenAI service in front of it;
    logs under artifacts/logs/test-<name>-{triton,service}.log."""
    missing = [
        p for p in (generator_weights_dir() / "model.safetensors", index_dir() / "faiss.index") if not p.exists()
    ]
    if missing:
        pytest.skip(f"artifacts missing ({', '.join(map(str, missing))}): run `make setup` first")
    repository = repository_copy(root / "model_repository")
    logs = artifacts_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    triton = TritonServer.on_free_ports(model_repository=repository, log_path=logs / f"test-{name}-triton.log")
    with triton:
        port = free_port()
        service_log = logs / f"test-{name}-service.log"
        process = start_service(triton, port, service_log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process, service_log)
            yield Stack(triton=triton, base_url=f"{url}/v1", url=url)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
