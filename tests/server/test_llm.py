"""The public LLM model (`llm`) through a real tritonserver: vllm_backend's interface, the generate extension, metrics.

Every input, output and sampling key of the interface is sent through the server (sampling
values as JSON strings too, as genai-perf and vllm_backend's clients send them); the HTTP
generate extension is driven with plain `requests`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from transformers import AutoTokenizer

from polling import wait_for
from tritonrag import metrics
from tritonrag.defaults import GENERATOR_MODEL, LLM_MODEL
from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir, generator_weights_dir
from tritonrag.triton.canary import RoutingConfig, read_config
from tritonrag.triton.repository import load_model_config, string_parameters
from tritonrag.triton.vllm_interface import RETURNABLE
from tritonrag_clients.prom import parse_metrics, total
from tritonrag_clients.streaming import bool_input, bytes_input, generator_inputs

PROMPT = "The capital of France is"
ALL_RETURNS = tuple(RETURNABLE)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(generator_weights_dir())


@pytest.fixture(scope="module")
def split() -> RoutingConfig:
    """The split in force on the test server (the artifacts' weights file, else the router's defaults)."""
    path = artifacts_dir() / "canary.json"
    if path.exists():
        return read_config(path)
    config = load_model_config(MODEL_REPOSITORY / LLM_MODEL / "config.pbtxt")
    return RoutingConfig.from_parameters(string_parameters(config))


def responses(server, inputs: list, model: str = LLM_MODEL, parameters: dict | None = None) -> list:
    """Every response of one streamed request, as tritonclient InferResults; raises the stream's error."""
    got, errors = [], []

    def callback(result=None, error=None):
        (errors if error is not None else got).append(error or result)

    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=callback)
    client.async_stream_infer(model, inputs, parameters=parameters, enable_empty_final_response=True)
    client.stop_stream()  # waits for the stream to finish
    client.close()
    if errors:
        raise errors[0]
    return [r for r in got if r.get_response().outputs]


def text_of(results) -> str:
    return "".join(r.as_numpy("text_output")[0].decode() for r in results)


def scrape(server) -> dict:
    return parse_metrics(requests.get(server.metrics_url, timeout=10).text)


def generate(server, body: dict, stream: bool = False) -> requests.Response:
    suffix = "generate_stream" if stream else "generate"
    return requests.post(f"http://{server.http_url}/v2/models/{LLM_MODEL}/{suffix}", json=body, timeout=120)


def events(response: requests.Response) -> list[dict]:
    """Server-sent events of a generate_stream response."""
    assert response.headers["Content-Type"].startswith("text/event-stream"), response.headers
    return [json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: ")]


# ---- the public model serves the stable version ---------------------------------------------


def test_unpinned_request_is_served_by_the_stable_version(server, split):
    if split.canary_weight > 0:
        pytest.skip(f"artifacts/canary.json sends {split.canary_weight:.0%} to the canary: not the default split")
    before = scrape(server)
    versions = [
        int(r.as_numpy("served_version")[0])
        for _ in range(6)
        for r in responses(server, generator_inputs(PROMPT, {"max_tokens": 1}, stream=False))
    ]
    assert versions == [split.stable_version] * 6

    success = metrics.TRITON_SUCCESS + "_total"  # prometheus_client names a counter's sample <family>_total

    def grown() -> dict[int, float]:  # Triton counts a decoupled request when it is released, a moment later
        after = scrape(server)
        count = {v: total(after, success, model=GENERATOR_MODEL, version=str(v)) for v in (1, 2)}
        return {v: n - total(before, success, model=GENERATOR_MODEL, version=str(v)) for v, n in count.items()}

    expected = {split.stable_version: 6, split.canary_version: 0}
    assert wait_for(lambda: grown() == expected), grown()
    # Over HTTP, with no version in the URL, too.
    body = generate(server, {"text_input": PROMPT, "parameters": {"max_tokens": 1}}).json()
    assert body["served_version"] == split.stable_version and body["model_name"] == LLM_MODEL


def test_the_internal_generator_defaults_to_the_canary(server, split):
    """Why `llm` is the public name: Triton sends an unversioned `generator` request to its highest version."""
    results = responses(server, generator_inputs(PROMPT, {"max_tokens": 1}), model=GENERATOR_MODEL)
    assert results[0].get_response().model_version == str(max(split.versions()))


# ---- the HTTP generate extension ------------------------------------------------------------


def test_generate_returns_one_response_with_the_whole_text(server, tokenizer):
    """stream is false by default and the prompt is prepended (exclude_input_in_output false), as in vllm_backend."""
    streamed = text_of(responses(server, generator_inputs(PROMPT, {"max_tokens": 8, "temperature": 0})))
    response = generate(server, {"text_input": PROMPT, "parameters": {"max_tokens": 8, "temperature": 0}})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert response.json()["text_output"] == PROMPT + streamed
    excluded = generate(
        server, {"text_input": PROMPT, "exclude_input_in_output": True, "parameters": {"max_tokens": "8"}}
    ).json()
    assert excluded["text_output"] == streamed


def test_generate_stream_sends_server_sent_events(server):
    body = {
        "text_input": PROMPT,
        "stream": True,
        "return_finish_reason": True,
        "return_num_output_tokens": True,
        "parameters": {"max_tokens": 6, "temperature": 0, "ignore_eos": True},
    }
    chunks = events(generate(server, body, stream=True))
    assert len(chunks) >= 2, "a streamed answer comes in several events"
    assert [c["finish_reason"] for c in chunks] == ["None"] * (len(chunks) - 1) + ["length"]
    assert sum(c["num_output_tokens"] for c in chunks) == 6
    whole = generate(server, {**body, "stream": False, "exclude_input_in_output": True}).json()
    assert "".join(c["text_output"] for c in chunks) == whole["text_output"]


def test_generate_stream_without_stream_sends_one_event(server):
    chunks = events(generate(server, {"text_input": PROMPT, "parameters": {"max_tokens": 4}}, stream=True))
    assert len(chunks) == 1 and chunks[0]["text_output"].startswith(PROMPT)


def test_parameters_also_carry_flags(server):
    """The generate extension's example puts `stream` among the parameters; so may a client (Triton makes a
    parameter named after an input that tensor, so flags there are JSON booleans)."""
    body = {"text_input": PROMPT, "parameters": {"stream": True, "max_tokens": 4, "return_num_output_tokens": True}}
    chunks = events(generate(server, body, stream=True))
    assert sum(c["num_output_tokens"] for c in chunks) == 4 and not chunks[0]["text_output"].startswith(PROMPT)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"text_input": PROMPT, "parameters": {"max_tokens": -1}}, "max_tokens must be >= 1"),
        ({"text_input": PROMPT, "parameters": {"beam_width": 2}}, "unknown request parameter(s) ['beam_width']"),
        ({"text_input": PROMPT, "parameters": {"n": 2}}, "sampling_parameters.n"),
        (
            {"text_input": PROMPT, "stream": True, "exclude_input_in_output": False},
            "exclude_input_in_output = false is not allowed when streaming",
        ),
        ({"text_input": PROMPT, "sampling_parameters": "{oops"}, "not valid JSON"),
    ],
)
def test_bad_requests_are_400(server, body, fragment):
    response = generate(server, body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


# ---- every output, with vllm_backend's types -------------------------------------------------


def test_every_output_streamed(server, tokenizer):
    inputs = generator_inputs(PROMPT, {"max_tokens": "5", "logprobs": "2", "ignore_eos": "true"}, returns=ALL_RETURNS)
    results = responses(server, inputs)
    types = {
        "finish_reason": np.object_,
        "cumulative_logprob": np.float32,
        "logprobs": np.object_,
        "num_input_tokens": np.uint32,
        "num_output_tokens": np.uint32,
    }
    for result in results:
        for name, dtype in types.items():
            assert result.as_numpy(name).dtype == dtype, name
    prompt_tokens = len(tokenizer(PROMPT)["input_ids"])
    assert {int(r.as_numpy("num_input_tokens")[0]) for r in results} == {prompt_tokens}
    assert sum(int(r.as_numpy("num_output_tokens")[0]) for r in results) == 5
    positions = [p for r in results for p in json.loads(r.as_numpy("logprobs")[0])]
    assert len(positions) == 5
    for position in positions:
        assert 2 <= len(position) <= 3  # the sampled token, then the 2 most likely
        for token_id, entry in position.items():
            assert int(token_id) >= 0 and entry["logprob"] <= 0 and entry["rank"] >= 1
            assert entry["decoded_token"] == tokenizer.decode([int(token_id)])
    sampled = sum(next(iter(p.values()))["logprob"] for p in positions)
    final = float(results[-1].as_numpy("cumulative_logprob")[0])
    assert math.isclose(final, sampled, rel_tol=1e-4, abs_tol=1e-4)
    assert results[-1].as_numpy("finish_reason")[0] == b"length"


def test_the_last_streamed_response_is_final_and_carries_outputs(server):
    """As vllm_backend: the last token's response carries the FINAL flag, no empty response follows it
    (perf_analyzer records an empty final as one more response, with whatever its buffers held)."""
    got = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result=None, error=None: got.append((result, error)))
    inputs = generator_inputs(PROMPT, {"max_tokens": "4", "ignore_eos": "true"}, returns=("num_output_tokens",))
    client.async_stream_infer(LLM_MODEL, inputs, enable_empty_final_response=True)
    client.stop_stream()
    client.close()
    assert all(error is None for _, error in got)
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r, _ in got]
    assert finals == [False] * (len(got) - 1) + [True]
    assert all(r.get_response().outputs for r, _ in got)
    assert sum(int(r.as_numpy("num_output_tokens")[0]) for r, _ in got) == 4


def test_every_output_in_one_response(server):
    """Not streamed: one response, the totals; cumulative_logprob without asking for logprobs; logprobs then null."""
    inputs = generator_inputs(PROMPT, {"max_tokens": 4, "ignore_eos": True}, stream=False, returns=ALL_RETURNS)
    inputs.append(bool_input("return_num_cached_tokens", True))
    (result,) = responses(server, inputs)
    assert int(result.as_numpy("num_output_tokens")[0]) == 4
    assert result.as_numpy("logprobs")[0] == b"null"
    assert -100 < float(result.as_numpy("cumulative_logprob")[0]) < 0
    assert result.as_numpy("num_cached_tokens").dtype == np.uint32
    assert result.as_numpy("text_output")[0].decode().startswith(PROMPT)


def test_outputs_only_when_asked(server):
    (result,) = responses(server, generator_inputs(PROMPT, {"max_tokens": 2}, stream=False, returns=()))
    assert {o.name for o in result.get_response().outputs} == {"text_output", "served_version"}


def test_grpc_request_parameters(server):
    """gRPC request parameters carry sampling keys as they do over HTTP."""
    inputs = [bytes_input("text_input", PROMPT), bool_input("return_num_output_tokens", True)]
    (result,) = responses(server, inputs, parameters={"max_tokens": 3, "ignore_eos": True, "temperature": "0"})
    assert int(result.as_numpy("num_output_tokens")[0]) == 3


# ---- every sampling key, as numbers and as strings -------------------------------------------


def run(server, sampling: dict, prompt: str = PROMPT) -> tuple[str, str, int]:
    """(text, finish reason, output tokens) of one non-streamed request."""
    inputs = generator_inputs(prompt, sampling, stream=False, exclude_input_in_output=True)
    (result,) = responses(server, inputs)
    return (
        result.as_numpy("text_output")[0].decode(),
        result.as_numpy("finish_reason")[0].decode(),
        int(result.as_numpy("num_output_tokens")[0]),
    )


def as_strings(sampling: dict) -> dict:
    """Numbers and booleans as JSON strings, as genai-perf sends them (lists stay lists, as in vllm_backend)."""
    return {
        k: v if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v) for k, v in sampling.items()
    }


@pytest.mark.parametrize("strings", [False, True], ids=["numbers", "strings"])
def test_length_keys(server, strings):
    convert = as_strings if strings else dict
    assert run(server, convert({"max_tokens": 5, "ignore_eos": True}))[1:] == ("length", 5)
    # min_tokens: EOS cannot end it earlier; a prompt that ends at once otherwise.
    eos_prompt = "<|im_start|>user\nSay OK.<|im_end|>\n<|im_start|>assistant\nOK.<|im_end|>"
    _, reason, count = run(server, convert({"max_tokens": 12, "min_tokens": 6}), eos_prompt)
    assert count >= 6, (reason, count)


@pytest.mark.parametrize("strings", [False, True], ids=["numbers", "strings"])
def test_stop_keys(server, tokenizer, strings):
    convert = as_strings if strings else dict
    greedy, _, _ = run(server, {"max_tokens": 16, "ignore_eos": True, "temperature": 0})
    stop = greedy.strip().split()[1]  # a word the greedy answer goes on to say
    text, reason, _ = run(server, convert({"max_tokens": 16, "stop": [stop], "temperature": 0}))
    assert reason == "stop" and stop not in text and greedy.startswith(text)
    token = tokenizer(greedy)["input_ids"][2]
    text, reason, count = run(server, convert({"max_tokens": 16, "stop_token_ids": [token], "temperature": 0}))
    assert reason == "stop" and count <= 3


@pytest.mark.parametrize("strings", [False, True], ids=["numbers", "strings"])
def test_random_sampling_keys(server, strings):
    """temperature, top_p, top_k, min_p, seed: a seed reproduces, another seed (usually) differs."""
    convert = as_strings if strings else dict
    base = {"max_tokens": 12, "ignore_eos": True, "temperature": 1.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05}
    first = run(server, convert({**base, "seed": 7}))[0]
    assert run(server, convert({**base, "seed": 7}))[0] == first
    others = {run(server, convert({**base, "seed": seed}))[0] for seed in (8, 9, 10)}
    assert others - {first}, "three other seeds all gave the seed-7 text"


@pytest.mark.parametrize("strings", [False, True], ids=["numbers", "strings"])
def test_penalty_keys(server, strings):
    """Each penalty changes a greedy answer that repeats itself."""
    convert = as_strings if strings else dict
    prompt = "one two one two one two one two one two"
    plain = run(server, {"max_tokens": 12, "ignore_eos": True, "temperature": 0}, prompt)[0]
    for key, value in (("repetition_penalty", 1.8), ("presence_penalty", 2.0), ("frequency_penalty", 2.0)):
        sampling = {"max_tokens": 12, "ignore_eos": True, "temperature": 0, key: value}
        assert run(server, convert(sampling), prompt)[0] != plain, key


@pytest.mark.parametrize("strings", [False, True], ids=["numbers", "strings"])
def test_vllm_keys_at_their_defaults(server, strings):
    """Keys vLLM clients send at vLLM's defaults are accepted (only those values)."""
    convert = as_strings if strings else dict
    sampling = {
        "max_tokens": 2,
        "n": 1,
        "best_of": 1,
        "use_beam_search": False,
        "skip_special_tokens": True,
        "detokenize": True,
        "include_stop_str_in_output": False,
        "spaces_between_special_tokens": True,
        "logprobs": 0,
    }
    assert run(server, convert(sampling))[2] == 2


# ---- metrics that vLLM dashboards read --------------------------------------------------------


def test_vllm_metric_names_on_the_endpoint(server):
    run(server, {"max_tokens": 3, "ignore_eos": True})
    labels = {"model": GENERATOR_MODEL}

    def e2e_counts(samples) -> tuple[float, float]:
        return total(samples, metrics.VLLM_E2E.name + "_count", **labels), total(
            samples, metrics.E2E.name + "_count", **labels
        )

    def flushed() -> bool:  # the engine's metrics reach /metrics a moment after the response (metric_outbox)
        samples = scrape(server)
        vllms, ours = e2e_counts(samples)
        return ours == vllms >= 1 and total(samples, metrics.VLLM_GENERATION_TOKENS.name, version="1", **labels) >= 3

    assert wait_for(flushed)
    samples = scrape(server)
    for family in metrics.VLLM_FAMILIES:
        suffix = "_count" if family.kind == metrics.HISTOGRAM else ""
        assert any(name == family.name + suffix for name, _ in samples), family.name
    assert total(samples, metrics.VLLM_GENERATION_TOKENS.name, version="1", **labels) >= 3
    assert total(samples, metrics.VLLM_TTFT.name + "_count", version="1", **labels) >= 1
    assert len(set(e2e_counts(samples))) == 1  # ours and vLLM's twin count the same requests
    # Triton's own latency quantiles (summary_latencies; 2.51 has no latency histograms).
    assert total(samples, metrics.TRITON_REQUEST_SUMMARY + "_count", model=LLM_MODEL) >= 1
