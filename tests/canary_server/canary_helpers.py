"""Helpers of the canary server tests: the test repository, split changes, many streams at once, metrics."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import tritonclient.grpc as grpcclient

from tritonrag.defaults import GENERATOR_MODEL, LLM_MODEL
from tritonrag.paths import MODEL_REPOSITORY
from tritonrag.triton.canary import RoutingConfig, write_config
from tritonrag_clients.canary import parse_metrics, total
from tritonrag_clients.streaming import bytes_input, generator_inputs

ROUTER = LLM_MODEL
DEFAULT_SPLIT = RoutingConfig(stable_version=1, canary_version=2, canary_weight=0.0, shadow_weight=0.0)
SEED = 20261123


def build_repository(root: Path, weights_file: Path) -> Path:
    repo = root / "model_repository"
    repo.mkdir(parents=True)
    for model in sorted(p.parent for p in MODEL_REPOSITORY.glob("*/config.pbtxt")):
        if model.name not in (GENERATOR_MODEL, ROUTER):
            (repo / model.name).symlink_to(model, target_is_directory=True)
    router = (MODEL_REPOSITORY / ROUTER / "config.pbtxt").read_text()
    router = router.replace("${TRITONRAG_ARTIFACTS}/canary.json", str(weights_file))
    router = re.sub(r'(key: "random_seed" value: \{ string_value: )""', rf'\1"{SEED}"', router)
    assert str(weights_file) in router and str(SEED) in router
    (repo / ROUTER).mkdir()
    (repo / ROUTER / "config.pbtxt").write_text(router)
    (repo / ROUTER / "1").symlink_to(MODEL_REPOSITORY / ROUTER / "1", target_is_directory=True)
    generator = (MODEL_REPOSITORY / "generator" / "config.pbtxt").read_text()
    generator += 'parameters { key: "v2:dtype" value: { string_value: "bfloat16" } }\n'
    for version in ("1", "2"):
        (repo / "generator" / version).mkdir(parents=True)
    (repo / "generator" / "config.pbtxt").write_text(generator)
    return repo


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

    def one(self, inputs: list, model: str = ROUTER) -> Result:
        return self.wait([self.send(inputs, model)])[0]

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def scrape(server) -> dict:
    return parse_metrics(requests.get(server.metrics_url, timeout=10).text)


def metric(server, name: str, **labels: str) -> float:
    return total(scrape(server), name, **labels)


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def versions_of(results: list[Result]) -> list[int]:
    return [r.version for r in results]
