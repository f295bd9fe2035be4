"""Helpers of the canary server tests: the test repository, split changes, many streams at once, metrics."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient

from tritonrag.defaults import GENERATOR_MODEL, LLM_MODEL
from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir, generator_weights_dir, index_dir
from tritonrag.retrieval.docstore import DocStore
from tritonrag.retrieval.prompt import PromptBuilder
from tritonrag.triton.canary import RoutingConfig, write_config
from tritonrag.triton.server import TritonServer
from tritonrag_clients.canary import parse_metrics, total
from tritonrag_clients.streaming import bytes_input, generator_inputs

ROUTER = LLM_MODEL
DEFAULT_SPLIT = RoutingConfig(stable_version=1, canary_version=2, canary_weight=0.0, shadow_weight=0.0)
SEED = 20261123


def build_repository(
    root: Path,
    weights_file: Path,
    metrics_port: int,
    versions: dict[int, dict[str, str]] | None = None,
    pipeline: bool = True,
) -> Path:
    """The real repository with the router reading `weights_file`, drawing from a seeded generator and
    driving rollouts from this server's /metrics; `versions` are the generator's versions and their
    own `v<N>:` settings (default 1 and 2 as configured); `pipeline` False keeps only llm and generator."""
    versions = versions or {1: {}, 2: {}}
    repo = root / "model_repository"
    repo.mkdir(parents=True)
    for model in sorted(p.parent for p in MODEL_REPOSITORY.glob("*/config.pbtxt")):
        if pipeline and model.name not in (GENERATOR_MODEL, ROUTER):
            (repo / model.name).symlink_to(model, target_is_directory=True)
    router = (MODEL_REPOSITORY / ROUTER / "config.pbtxt").read_text()
    router = router.replace("${TRITONRAG_ARTIFACTS}/canary.json", str(weights_file))
    router = re.sub(r'(key: "random_seed" value: \{ string_value: )""', rf'\1"{SEED}"', router)
    router = router.replace("http://127.0.0.1:8002/metrics", f"http://127.0.0.1:{metrics_port}/metrics")
    assert str(weights_file) in router and str(SEED) in router and f":{metrics_port}/" in router
    (repo / ROUTER).mkdir()
    (repo / ROUTER / "config.pbtxt").write_text(router)
    (repo / ROUTER / "1").symlink_to(MODEL_REPOSITORY / ROUTER / "1", target_is_directory=True)
    generator = (MODEL_REPOSITORY / GENERATOR_MODEL / "config.pbtxt").read_text()
    listed = ", ".join(str(v) for v in sorted(versions))
    generator, found = re.subn(r"versions: \[[^\]]*\]", f"versions: [ {listed} ]", generator)
    assert found == 1, "the generator's version_policy lists its versions"
    for version, settings in versions.items():
        (repo / GENERATOR_MODEL / str(version)).mkdir(parents=True)
        for key, value in settings.items():
            generator += f'parameters {{ key: "v{version}:{key}" value: {{ string_value: "{value}" }} }}\n'
    (repo / GENERATOR_MODEL / "config.pbtxt").write_text(generator)
    return repo


def skip_without_artifacts() -> None:
    need = (generator_weights_dir() / "model.safetensors", index_dir() / "faiss.index", index_dir() / "docstore.sqlite")
    missing = [p for p in need if not p.exists()]
    if missing:
        pytest.skip(f"artifacts missing ({', '.join(map(str, missing))}): run `make setup` first")


READY_TIMEOUT = 900.0  # four generator engines warming up on two busy cores took over five minutes


def start_server(root: Path, weights_file: Path, log_name: str, **repository) -> TritonServer:
    """A tritonserver on free ports over `build_repository(...)`, not started (see `running`)."""
    instance = TritonServer.on_free_ports(log_path=artifacts_dir() / "logs" / log_name)
    instance.model_repository = build_repository(root, weights_file, instance.metrics_port, **repository)
    return instance


@contextmanager
def running(*servers: TritonServer) -> Iterator[list[TritonServer]]:
    """Start the servers at once, wait until each is ready (a generous limit), stop them all at the end."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(READY_TIMEOUT)
        yield list(servers)
    finally:
        for server in servers:
            server.stop()


QUESTIONS = [
    "How do I read a file line by line?",
    "What does the with statement do?",
    "How do I sort a list of dictionaries by a key?",
    "What is a generator expression?",
    "How do I parse JSON from a string?",
    "What is the difference between a list and a tuple?",
    "How do I start a thread and wait for it?",
    "How are exceptions chained with raise from?",
]


def rag_prompts(count: int = 4, passages: int = 5) -> list[str]:
    """RAG-length prompts without the pipeline: the prompt builder's template over corpus passages
    (the same shape `rag` sends the LLM: system prompt, numbered passages, question)."""
    builder = PromptBuilder(generator_weights_dir())
    store = DocStore(index_dir() / "docstore.sqlite", readonly=True)
    try:
        total = store.count()
        prompts = []
        for i, question in enumerate(QUESTIONS[:count]):
            ids = [(97 * (i * passages + j) + 13) % total for j in range(passages)]
            chosen = [{**vars(p), "score": 1.0} for p in store.get(ids)]
            prompts.append(builder.build(question, chosen))
        return prompts
    finally:
        store.close()


def set_split(path: Path, **values) -> RoutingConfig:
    config = RoutingConfig(**{**DEFAULT_SPLIT.to_dict(), **values})
    write_config(path, config)
    return config


# ---- requests ----


def router_inputs(
    prompt: str = "The capital of France is",
    sampling: dict | None = None,
    key: str | None = None,
    pin: str | None = None,
) -> list:
    inputs = generator_inputs(prompt, sampling or {"max_tokens": 1, "temperature": 0})
    if key is not None:
        inputs.append(bytes_input("routing_key", key))
    if pin is not None:
        inputs.append(bytes_input("model_version", pin))
    return inputs


@dataclass
class Result:
    """One streamed request: the versions its responses name, its text, how it ended."""

    versions: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def version(self) -> int:
        assert self.error is None and len(set(self.versions)) == 1, (self.error, self.versions)
        return self.versions[0]


class Streams:
    """Many requests in flight on one gRPC stream, each followed to its final response.

    Stream errors carry no request id: an error is pinned on the request only when it is
    the one in flight; otherwise it is kept in `stray_errors` (tests assert there are none).
    """

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.results: dict[str, Result] = {}
        self.stray_errors: list[str] = []
        self.lock = threading.Lock()
        self.counter = 0
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result=None, error=None) -> None:
        if error is not None:
            pending = [r for r in self.results.values() if not r.done.is_set()]
            if len(pending) == 1:
                pending[0].error = error.message()
                pending[0].done.set()
            else:
                self.stray_errors.append(error.message())
            return
        response = result.get_response()
        target = self.results[response.id]
        names = {output.name for output in response.outputs}
        if "served_version" in names:
            target.versions.append(int(result.as_numpy("served_version").reshape(-1)[0]))
        if "text_output" in names:
            target.text += "".join(t.decode() for t in result.as_numpy("text_output").reshape(-1))
        if "finish_reason" in names:
            target.finish_reason = result.as_numpy("finish_reason").reshape(-1)[0].decode()
        if "num_input_tokens" in names:
            target.num_input_tokens = int(result.as_numpy("num_input_tokens").reshape(-1)[0])
        if "num_output_tokens" in names:  # per response (vllm_backend's meaning): add them up
            count = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
            target.num_output_tokens = (target.num_output_tokens or 0) + count
        final = response.parameters.get("triton_final_response")
        if final is not None and final.bool_param:
            target.done.set()

    def send(self, inputs: list, model: str = ROUTER) -> Result:
        with self.lock:
            self.counter += 1
            request_id = f"r{self.counter}"
        result = self.results[request_id] = Result()
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
        return result

    def wait(self, results: list[Result], timeout: float = 180.0) -> list[Result]:
        deadline = time.monotonic() + timeout
        for result in results:
            if not result.done.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no final response after {timeout} s; stray errors: {self.stray_errors[:3]}")
        return results

    def send_many(self, requests: list[list], model: str = ROUTER, in_flight: int = 48, timeout: float = 900.0):
        """Send every request, never more than `in_flight` unfinished at once (the router refuses streams
        beyond its max_streams, 64, as UNAVAILABLE), and wait for them all."""
        results: list[Result] = []
        pending: list[Result] = []
        for inputs in requests:
            while len(pending) >= in_flight:
                pending = [r for r in pending if not r.done.is_set()]
                time.sleep(0.005)
            results.append(self.send(inputs, model))
            pending.append(results[-1])
        return self.wait(results, timeout)

    def one(self, inputs: list, model: str = ROUTER) -> Result:
        return self.wait([self.send(inputs, model)])[0]

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def scrape(server) -> dict:
    return parse_metrics(requests.get(server.metrics_url, timeout=10).text)


def metric(server, name: str, **labels: str) -> float:
    return total(scrape(server), name, **labels)


def versions_of(results: list[Result]) -> list[int]:
    return [r.version for r in results]


class Load:
    """Keeps `concurrency` keyed requests (each key new, so keys spread by the split) in flight through the
    router until stopped, cycling over `prompts`; every result is kept, in order."""

    def __init__(self, url: str, prompts: list[str], sampling: dict, concurrency: int = 4) -> None:
        self.streams = Streams(url)
        self.prompts, self.sampling, self.concurrency = prompts, sampling, concurrency
        self.results: list[Result] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def _run(self) -> None:
        in_flight: list[Result] = []
        while not self.stopped.is_set():
            in_flight = [r for r in in_flight if not r.done.is_set()]
            while len(in_flight) < self.concurrency:
                n = len(self.results)
                result = self.streams.send(
                    router_inputs(self.prompts[n % len(self.prompts)], self.sampling, key=f"load-{n}")
                )
                self.results.append(result)
                in_flight.append(result)
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.streams.wait(self.results, timeout=300)
        self.streams.close()

    def errors(self) -> list[str]:
        return [r.error for r in self.results if r.error] + self.streams.stray_errors
