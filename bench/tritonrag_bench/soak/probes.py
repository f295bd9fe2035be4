"""Reading the server's state: the generator's engine gauges per version (/metrics), readiness of the
server and each model, and small requests that show a version (or the whole path) still answers."""

from __future__ import annotations

import random

import requests

from tritonrag import metrics
from tritonrag.defaults import ENSEMBLE_MODEL, GENERATOR_MODEL, LLM_MODEL
from tritonrag_bench.soak.calls import Call, Limits, grpc_stream
from tritonrag_bench.soak.scenarios import Target, llm_stream, rag_stream
from tritonrag_clients.prom import parse_metrics, total
from tritonrag_clients.streaming import bytes_input, generator_inputs

MODELS = (
    ENSEMBLE_MODEL,
    LLM_MODEL,
    GENERATOR_MODEL,
    "preprocess",
    "embedder",
    "retriever",
    "reranker",
    "prompt_builder",
)
GAUGES = {"running": metrics.RUNNING, "waiting": metrics.WAITING, "kv": metrics.KV_USAGE}


def engine_gauges(metrics_url: str) -> dict[str, dict[str, float]]:
    """{version: {running, waiting, kv}} of every generator version on /metrics ({} if unreachable)."""
    try:
        samples = parse_metrics(requests.get(metrics_url, timeout=10).text)
    except requests.RequestException:
        return {}
    versions = sorted(
        {
            dict(labels)["version"]
            for (name, labels) in samples
            if name == metrics.RUNNING.name and dict(labels).get("model") == GENERATOR_MODEL
        }
    )
    return {
        version: {
            key: total(samples, family.name, model=GENERATOR_MODEL, version=version) for key, family in GAUGES.items()
        }
        for version in versions
    }


def engine_line(metrics_url: str) -> str:
    gauges = engine_gauges(metrics_url)
    if not gauges:
        return "metrics: unreachable"
    return " ".join(f"v{v}: run {g['running']:.0f} wait {g['waiting']:.0f} kv {g['kv']:.1%}" for v, g in gauges.items())


def readiness(http_url: str) -> dict[str, bool]:
    """Server live and ready, and each model ready (Triton's own view)."""
    out = {}
    for name, path in (("server live", "health/live"), ("server ready", "health/ready")):
        out[name] = _ok(f"http://{http_url}/v2/{path}")
    for model in MODELS:
        out[model] = _ok(f"http://{http_url}/v2/models/{model}/ready")
    return out


def version_ready(http_url: str, version: int) -> bool:
    return _ok(f"http://{http_url}/v2/models/{GENERATOR_MODEL}/versions/{version}/ready")


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code == 200
    except requests.RequestException:
        return False


def pinned(target: Target, version: int, rng: random.Random) -> Call:
    """A tiny `llm` request pinned to one generator version."""
    inputs = generator_inputs("Hello", {"max_tokens": 2, "temperature": 0}, returns=())
    inputs.append(bytes_input("model_version", str(version)))
    return grpc_stream(
        target.grpc, LLM_MODEL, inputs, Limits(min(target.limits.deadline_s, 60.0), target.limits.timeout_us)
    )


def plain_requests(target: Target) -> dict[str, Call]:
    """One ordinary routed `llm` stream and one `rag` stream after the soak: the path still answers."""
    rng = random.Random(0)
    return {"llm": llm_stream(target, rng, 8), "rag": rag_stream(target, rng, 8)}
