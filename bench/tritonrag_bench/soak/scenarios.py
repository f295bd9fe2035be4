"""The traffic mix: each scenario is one kind of call, its weight in the mix, and the codes it accepts.

Normal calls accept OK and UNAVAILABLE (load shed); cancels and disconnects also accept the
client's own end; bad inputs accept INVALID_ARG only, and its message must name the field (the
limits in README, Security and limits). After the chaos kill, STUB_DEAD is accepted from the
calls that reach the killed version (the runner decides that; see runner.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from tritonrag.defaults import ENSEMBLE_MODEL, LLM_MODEL
from tritonrag_bench.soak.calls import Call, Limits, grpc_stream, http_generate, http_stream
from tritonrag_bench.soak.outcomes import CANCELLED, DISCONNECTED, INVALID_ARG, OK, TRITON_JSON, UNAVAILABLE
from tritonrag_clients.streaming import bytes_input, generator_inputs, rag_inputs

QUESTIONS = (
    "How do I read a CSV file?",
    "What does functools.lru_cache do?",
    "How can I run a subprocess and capture its output?",
    "How do I parse JSON from a string?",
    "What is a dataclass?",
    "How do I sort a list of dictionaries by a key?",
    "How do I create a temporary directory?",
    "How do I format a datetime as ISO 8601?",
)
PROMPTS = (
    "Write a short poem about the sea.",
    "List three uses of a hash table.",
    "Explain recursion in one paragraph.",
    "Tell me a story about a robot.",
    "What is the capital of France?",
)
BAD_PINS = ("²", "١", "7", "x", "-1", "9" * 5000, str(2**63))
SERVED = frozenset({OK, UNAVAILABLE})


@dataclass(frozen=True)
class Target:
    """The server's addresses, and each call's limits."""

    grpc: str
    http: str
    limits: Limits


@dataclass(frozen=True)
class Scenario:
    name: str
    route: str
    weight: float
    run: Callable[[Target, random.Random], Call]
    accept: frozenset[str] = SERVED
    field: str | None = None  # an INVALID_ARG must name this


def _sampling(rng: random.Random, max_tokens: int, long: bool = False) -> dict:
    sampling: dict = {"max_tokens": max_tokens, "temperature": rng.choice((0, 0.7))}
    if long:
        sampling["ignore_eos"] = True
    return sampling


def llm_stream(target: Target, rng: random.Random, max_tokens: int | None = None) -> Call:
    tokens = max_tokens or rng.randint(8, 32)
    inputs = generator_inputs(rng.choice(PROMPTS), _sampling(rng, tokens), returns=())
    return grpc_stream(target.grpc, LLM_MODEL, inputs, target.limits)


def rag_stream(target: Target, rng: random.Random, max_tokens: int | None = None) -> Call:
    inputs = rag_inputs(rng.choice(QUESTIONS), top_k=rng.randint(1, 4), sampling=_sampling(rng, max_tokens or 24))
    return grpc_stream(target.grpc, ENSEMBLE_MODEL, inputs, target.limits)


def _llm_cancel(target: Target, rng: random.Random) -> Call:
    inputs = generator_inputs(rng.choice(PROMPTS), _sampling(rng, 300, long=True), returns=())
    return grpc_stream(target.grpc, LLM_MODEL, inputs, target.limits, cancel_after=rng.randint(1, 4))


def _rag_cancel(target: Target, rng: random.Random) -> Call:
    # Generation behind a cancelled rag stream may run on (README: the ensemble does not pass the
    # cancel on in 2.51): bounded by a modest max_tokens, and the drain check counts what stays held.
    inputs = rag_inputs(rng.choice(QUESTIONS), sampling=_sampling(rng, 48, long=True))
    return grpc_stream(target.grpc, ENSEMBLE_MODEL, inputs, target.limits, cancel_after=rng.randint(1, 3))


def _llm_http(target: Target, rng: random.Random) -> Call:
    body = {"text_input": rng.choice(PROMPTS), "max_tokens": rng.randint(8, 32), "temperature": 0}
    return http_generate(target.http, LLM_MODEL, body, target.limits)


def _llm_http_stream(target: Target, rng: random.Random) -> Call:
    body = {"text_input": rng.choice(PROMPTS), "max_tokens": rng.randint(8, 32), "stream": True}
    return http_stream(target.http, LLM_MODEL, body, target.limits)


def _llm_disconnect(target: Target, rng: random.Random) -> Call:
    body = {"text_input": rng.choice(PROMPTS), "max_tokens": 300, "ignore_eos": True, "stream": True}
    return http_stream(target.http, LLM_MODEL, body, target.limits, drop_after=rng.randint(1, 4))


def _rag_http_stream(target: Target, rng: random.Random) -> Call:
    body = {"query": rng.choice(QUESTIONS), "sampling_parameters": json.dumps(_sampling(rng, 24))}
    return http_stream(target.http, ENSEMBLE_MODEL, body, target.limits)


def _bad_llm(sampling: str = '{"max_tokens": 4}', prompt: str = "Hello", bad_pin: bool = False):
    """A gRPC llm stream with one bad input (sampling JSON, prompt, or a pin drawn from BAD_PINS)."""

    def run(target: Target, rng: random.Random) -> Call:
        inputs = generator_inputs(prompt, sampling, returns=())
        if bad_pin:
            inputs.append(bytes_input("model_version", rng.choice(BAD_PINS)))
        return grpc_stream(target.grpc, LLM_MODEL, inputs, target.limits)

    return run


def _bad_rag(query: str | None, sampling: str = '{"max_tokens": 4}', bad_pin: bool = False):
    def run(target: Target, rng: random.Random) -> Call:
        inputs = [bytes_input("sampling_parameters", sampling)]
        if query is not None:
            inputs.append(bytes_input("query", query))
        if bad_pin:
            inputs.append(bytes_input("model_version", rng.choice(BAD_PINS)))
        return grpc_stream(target.grpc, ENSEMBLE_MODEL, inputs, target.limits)

    return run


def _bad_http(body: dict | str, bad_pin: bool = False):
    """HTTP generate on llm with a bad field (a str body is sent as it is)."""

    def run(target: Target, rng: random.Random) -> Call:
        sent = {**body, "model_version": rng.choice(BAD_PINS)} if bad_pin and isinstance(body, dict) else body
        return http_generate(target.http, LLM_MODEL, sent, target.limits)

    return run


BAD = frozenset({INVALID_ARG})


def mix() -> list[Scenario]:
    """Every scenario of the worker mix with its weight (bursts, flips and the kill are the timeline's)."""
    huge_stop = json.dumps({"max_tokens": 4, "stop": ["x"] * 5000})
    return [
        Scenario("llm_stream", "grpc llm", 20, llm_stream),
        Scenario("rag_stream", "grpc rag", 10, rag_stream),
        Scenario("llm_http", "http llm", 6, _llm_http),
        Scenario("llm_http_stream", "http llm sse", 6, _llm_http_stream),
        Scenario("rag_http_stream", "http rag sse", 4, _rag_http_stream),
        Scenario("llm_cancel", "grpc llm", 8, _llm_cancel, SERVED | {CANCELLED}),
        Scenario("rag_cancel", "grpc rag", 4, _rag_cancel, SERVED | {CANCELLED}),
        Scenario("llm_disconnect", "http llm sse", 5, _llm_disconnect, SERVED | {DISCONNECTED}),
        Scenario("bad_nan_temperature", "grpc llm", 2, _bad_llm('{"temperature": NaN}'), BAD, "temperature"),
        Scenario("bad_huge_stop_list", "grpc llm", 2, _bad_llm(huge_stop), BAD, "stop"),
        Scenario("bad_malformed_json", "grpc llm", 2, _bad_llm('{"max_tokens": 4,'), BAD, "sampling_parameters"),
        Scenario("bad_version_pin", "grpc llm", 2, _bad_llm(bad_pin=True), BAD, "version"),
        Scenario("bad_oversize_prompt", "grpc llm", 2, _bad_llm(prompt="x" * 70_000), BAD, "text_input"),
        Scenario("bad_empty_prompt", "grpc llm", 1, _bad_llm(prompt=""), BAD, "text_input"),
        Scenario("bad_rag_no_query", "grpc rag", 1, _bad_rag(None), BAD, "query"),
        Scenario("bad_rag_oversize_query", "grpc rag", 1, _bad_rag("why " * 2500), BAD, "query"),
        Scenario("bad_rag_version_pin", "grpc rag", 1, _bad_rag("what is json", bad_pin=True), BAD, "version"),
        Scenario(
            "bad_rag_nan_temperature", "grpc rag", 1, _bad_rag("what is json", '{"temperature": NaN}'), BAD, "sampling"
        ),
        Scenario(
            "bad_http_nan_temperature",
            "http llm",
            1,
            _bad_http({"text_input": "Hello", "temperature": "NaN"}),
            BAD,
            "temperature",
        ),
        Scenario(
            "bad_http_version_pin",
            "http llm",
            1,
            _bad_http({"text_input": "Hello", "max_tokens": 4}, bad_pin=True),
            BAD,
            "version",
        ),
        # Triton's own HTTP JSON parser refuses this body (500) before any model runs (README).
        Scenario(
            "bad_http_malformed_body",
            "http llm",
            1,
            _bad_http('{"text_input": "Hello", "max_tokens": 4'),
            frozenset({TRITON_JSON}),
            "parse",
        ),
    ]
