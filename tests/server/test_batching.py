"""The batching the README claims, shown through real tritonservers under load, by counts only.

- Dynamic batching: concurrent `rag` requests reach the embedder and the reranker in fewer
  executions than requests (Triton's statistics extension).
- Chunked prefill: a long prompt that arrives while decodes run is computed in chunks, each
  step carrying its chunk beside the decode rows (the engine's step-shape counters); a short
  prompt sent just after a long one gets its first token first (shortest-first prefill).
- Preemption: a generator with a small KV pool under concurrent long requests preempts and
  resumes; every request succeeds with the greedy text of an unpressured run.

The first two use the shared server (tests/server/conftest.py); the third starts its own,
a repository with only the generator, one version with a small KV pool (about 20 s to ready).
"""

from __future__ import annotations

import math
import re
import uuid
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from polling import settled
from tritonrag import metrics
from tritonrag.defaults import ENSEMBLE_MODEL, GENERATOR_MODEL
from tritonrag.engine.config import EngineConfig
from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir, generator_weights_dir
from tritonrag.triton.generator_config import engine_config
from tritonrag.triton.prom import scrape, total
from tritonrag.triton.repository import load_model_config, string_parameters
from tritonrag.triton.server import TritonServer
from tritonrag_clients.streaming import StreamEvent, StreamingClient, collect, generator_inputs, rag_inputs

QUESTIONS = [
    "How do I read a file line by line?",
    "What does the with statement do?",
    "How do I sort a list of dictionaries by a key?",
    "How can I run a shell command and capture its output?",
    "What is a decorator?",
    "How do I parse JSON from a string?",
    "How do I make a temporary directory?",
    "How do I cache the results of a function?",
    "How do I iterate over two lists at once?",
    "What is the difference between a list and a tuple?",
    "How do I format a date as a string?",
    "How do I count the items in a list?",
    "How do I join paths on any platform?",
    "How do I start a thread?",
    "How do I match a regular expression?",
    "How do I copy a file?",
]
BATCHED_STAGES = ("embedder", "retriever", "reranker")
GENERATOR_V1 = {"model": GENERATOR_MODEL, "version": "1"}


def stage_counts(server, model: str) -> tuple[int, int]:
    """(successful requests, executions) of `model`, from Triton's statistics extension."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(model_name=model, as_json=True)
    finally:
        client.close()
    rows = stats.get("model_stats", [])
    requests = sum(int(row["inference_stats"]["success"].get("count", 0)) for row in rows)
    return requests, sum(int(row.get("execution_count", 0)) for row in rows)


def test_embedder_and_reranker_form_dynamic_batches(server):
    """16 rag requests at once: each batched stage runs fewer executions than it gets requests."""
    before = {model: stage_counts(server, model) for model in BATCHED_STAGES}
    sampling = {"max_tokens": 2, "temperature": 0}
    with StreamingClient(server.grpc_url) as client:
        ids = [client.send(ENSEMBLE_MODEL, rag_inputs(q, top_k=2, sampling=sampling)) for q in QUESTIONS]
        answers = [collect(client.receive(request_id)) for request_id in ids]
    assert all(sources for _, sources, _ in answers), "every request went through retrieval"
    grown = {}
    for model in BATCHED_STAGES:
        after = stage_counts(server, model)
        grown[model] = (after[0] - before[model][0], after[1] - before[model][1])
    print(f"\nbatching under {len(QUESTIONS)} concurrent rag requests (requests, executions): {grown}")
    for model in ("embedder", "reranker"):
        requests, executions = grown[model]
        assert requests == len(QUESTIONS), model
        assert 1 <= executions < requests, f"{model}: {executions} executions for {requests} requests"


def version_1() -> EngineConfig:
    """Version 1's engine settings as configured (the shared server serves the real repository)."""
    params = string_parameters(load_model_config(MODEL_REPOSITORY / GENERATOR_MODEL / "config.pbtxt"))
    return engine_config(params, 1, MODEL_REPOSITORY)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(generator_weights_dir())


def num_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])  # as the backend counts a prompt


def long_prompt(tokenizer, at_least: int) -> str:
    """A prompt of at least `at_least` tokens that no earlier request shares a block with."""
    words = ["open", "read", "lines", "file", "path", "close", "write", "buffer", "encoding", "stream"]
    text = f"Request {uuid.uuid4().hex}. Summarise these notes:"
    while num_tokens(tokenizer, text) < at_least:
        text += " " + " ".join(words[(len(text) + i) % len(words)] for i in range(40))
    return text


def step_counts(server) -> tuple[float, float, float]:
    samples = scrape([server.metrics_url])
    return tuple(
        total(samples, family.name, **GENERATOR_V1)
        for family in (metrics.ENGINE_STEPS, metrics.MIXED_STEPS, metrics.PARTIAL_PREFILL_CHUNKS)
    )


def first_text(events) -> StreamEvent:
    """Read a stream up to its first text delta (the sequence is decoding); the rest stays in the queue."""
    for event in events:
        assert event.error is None, event.error
        if event.text:
            return event
    raise AssertionError("the stream ended before its first token")


def test_long_prompt_is_prefilled_in_chunks_beside_running_decodes(server, tokenizer):
    """4 decodes running, then a prompt of over 3 step budgets: each of its chunks rides beside decode rows."""
    budget = version_1().max_num_batched_tokens
    prompt = long_prompt(tokenizer, 3 * budget + 64)
    # Running decodes are served first, one row each: the prompt gets what is left of every step's budget.
    chunks = math.ceil(num_tokens(tokenizer, prompt) / (budget - 4))
    decode = {"max_tokens": 48, "temperature": 0, "ignore_eos": True}
    before = settled(lambda: step_counts(server))
    with StreamingClient(server.grpc_url) as client:
        streams = []
        for i in range(4):
            request_id = client.send(
                GENERATOR_MODEL, generator_inputs(f"Count to {i + 20}:", decode), model_version="1"
            )
            streams.append(client.receive(request_id))
        for events in streams:
            first_text(events)
        long_id = client.send(GENERATOR_MODEL, generator_inputs(prompt, {"max_tokens": 2}), model_version="1")
        _, _, last = collect(client.receive(long_id))
        assert last.finish_reason in ("stop", "length")
        for events in streams:  # the decodes ran on through the long prefill and end at max_tokens
            _, _, end = collect(events)
            assert end.finish_reason == "length"
    steps, mixed, partial = (after - then for after, then in zip(settled(lambda: step_counts(server)), before))
    print(
        f"\nchunked prefill of {num_tokens(tokenizer, prompt)} tokens (budget {budget}) beside 4 decodes: "
        f"{steps:.0f} steps, {mixed:.0f} mixed (prefill chunk + decode rows), {partial:.0f} partial prefill chunks"
    )
    assert partial == chunks - 1, "the long prompt was not split over steps as the budget says"
    assert mixed >= chunks, "its chunks did not run beside the decode rows"
    assert steps >= mixed


def test_a_short_prompt_sent_behind_a_long_one_gets_its_first_token_first(server, tokenizer):
    """Shortest-first prefill (the shipped prefill_order): a prompt of over 4 step budgets, then a short one
    a moment later. Arrival order would finish the long prefill first (it holds every step's budget as the
    oldest running prompt); shortest-first prefills the short one in the next step."""
    config = version_1()
    assert config.prefill_order == "shortest"
    prompt = long_prompt(tokenizer, 4 * config.max_num_batched_tokens)
    with StreamingClient(server.grpc_url) as client:
        long_id = client.send(GENERATOR_MODEL, generator_inputs(prompt, {"max_tokens": 2}), model_version="1")
        short_id = client.send(GENERATOR_MODEL, generator_inputs("Say hello.", {"max_tokens": 2}), model_version="1")
        long_events, short_events = client.receive(long_id), client.receive(short_id)
        long_first, short_first = first_text(long_events), first_text(short_events)
        for events in (long_events, short_events):
            assert collect(events)[2].finish_reason in ("stop", "length")
    print(f"\nfirst tokens: short {short_first.time - long_first.time:+.2f} s after the long prompt's")
    assert short_first.time < long_first.time


# ---- preemption on a small KV pool --------------------------------------------------------
SMALL_POOL_BLOCKS = 32  # 512 tokens of KV: six requests of ~125 tokens need 1.5 times that at once
SMALL_POOL_REQUESTS = 6
SMALL_POOL_MAX_TOKENS = 96
SMALL_POOL_TOPICS = ("rivers", "bread", "bridges", "owls", "trains", "glass")


def small_pool_repository(root: Path) -> Path:
    """The real generator config serving version 1 only, with a KV pool of SMALL_POOL_BLOCKS blocks."""
    repo = root / "model_repository"
    (repo / GENERATOR_MODEL / "1").mkdir(parents=True)
    config = (MODEL_REPOSITORY / GENERATOR_MODEL / "config.pbtxt").read_text()
    config, found = re.subn(r"versions: \[[^\]]*\]", "versions: [ 1 ]", config)
    assert found == 1, "the generator's version_policy lists its versions"
    max_model_len = SMALL_POOL_BLOCKS * version_1().block_size  # all of the pool: no clamp to log
    for key, value in (("num_kv_blocks", SMALL_POOL_BLOCKS), ("max_model_len", max_model_len)):
        config += f'parameters {{ key: "v1:{key}" value: {{ string_value: "{value}" }} }}\n'
    (repo / GENERATOR_MODEL / "config.pbtxt").write_text(config)
    return repo


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    if not (generator_weights_dir() / "model.safetensors").exists():
        pytest.skip("generator weights missing: run `make setup` first")
    repo = small_pool_repository(tmp_path_factory.mktemp("small-pool"))
    with TritonServer.on_free_ports(model_repository=repo, log_path=artifacts_dir() / "logs" / "small-kv.log") as s:
        yield s


def chat(topic: str) -> str:
    question = f"Write a long, detailed essay about {topic}, their history and how people use them today."
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def run_greedy(server, prompts: list[str], in_flight: int) -> list[tuple[str, StreamEvent]]:
    """Each prompt greedy to SMALL_POOL_MAX_TOKENS, `in_flight` at a time on one stream."""
    sampling = {"max_tokens": SMALL_POOL_MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    results = []
    with StreamingClient(server.grpc_url) as client:
        for start in range(0, len(prompts), in_flight):
            ids = [
                client.send(GENERATOR_MODEL, generator_inputs(p, sampling)) for p in prompts[start : start + in_flight]
            ]
            for request_id in ids:
                text, _, last = collect(client.receive(request_id))
                results.append((text, last))
    return results


def pool_counts(server) -> dict[str, float]:
    samples = scrape([server.metrics_url])
    return {
        "preemptions": total(samples, metrics.PREEMPTIONS.name, **GENERATOR_V1),
        "errors": total(samples, metrics.REQUEST_SUCCESS.name, finished_reason="error", **GENERATOR_V1),
        "failures": total(samples, metrics.TRITON_FAILURE, model=GENERATOR_MODEL),
    }


def test_small_kv_pool_preempts_and_resumes_without_a_failed_request(small_pool, tokenizer):
    prompts = [chat(topic) for topic in SMALL_POOL_TOPICS[:SMALL_POOL_REQUESTS]]
    block_size = version_1().block_size
    need = [math.ceil((num_tokens(tokenizer, p) + SMALL_POOL_MAX_TOKENS) / block_size) for p in prompts]
    # Every prompt fits at once, so all are admitted in the first steps; their growth then cannot fit.
    assert sum(need) > SMALL_POOL_BLOCKS, "the load must not fit the pool"
    unpressured = max(1, SMALL_POOL_BLOCKS // max(need))  # this many at once always fit: nothing to preempt
    start = settled(lambda: pool_counts(small_pool))
    alone = run_greedy(small_pool, prompts, in_flight=unpressured)
    mid = settled(lambda: pool_counts(small_pool))
    assert mid["preemptions"] == start["preemptions"], "the unpressured run was meant to fit the pool"
    pressured = run_greedy(small_pool, prompts, in_flight=len(prompts))
    end = settled(lambda: pool_counts(small_pool))
    preempted = end["preemptions"] - mid["preemptions"]
    print(
        f"\nsmall KV pool ({SMALL_POOL_BLOCKS} blocks of {block_size}): {len(prompts)} requests needing "
        f"{sum(need)} blocks at once, {preempted:.0f} preemptions; unpressured reference {unpressured} at a time"
    )
    assert preempted >= 1, "the pool was meant to be too small for the whole batch"
    assert end["errors"] == start["errors"] and end["failures"] == start["failures"]
    for (text, last), (reference, _) in zip(pressured, alone):
        assert last.finish_reason == "length" and last.num_output_tokens == SMALL_POOL_MAX_TOKENS
        assert text == reference
