"""Our tritonrag_llm backend (the `generator` versions) through a real tritonserver, called as clients do: via `llm`."""

import re
import threading

import pytest
import requests

from polling import wait_for
from tritonrag.defaults import LLM_MODEL
from tritonrag.paths import generator_weights_dir
from tritonrag_clients.streaming import StreamingClient, collect, generator_inputs

PROMPTS = [
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
]


def metric(server, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    text = requests.get(server.metrics_url, timeout=10).text
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
            found = True
    assert found, f"metric {name} {labels} not on the endpoint"
    return total


@pytest.fixture(scope="module")
def hf_greedy():
    """Hugging Face generate() on the same weights: the reference for greedy output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(generator_weights_dir())
    model = AutoModelForCausalLM.from_pretrained(generator_weights_dir()).eval()

    def generate(prompt: str, max_tokens: int) -> str:
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)

    return generate


def run(server, prompt, sampling, stream=True):
    with StreamingClient(server.grpc_url) as client:
        events = list(client.stream(LLM_MODEL, generator_inputs(prompt, sampling, stream)))
    return events


def test_greedy_matches_hugging_face(server, hf_greedy):
    for prompt in PROMPTS:
        events = run(server, prompt, {"max_tokens": 32, "temperature": 0})
        text, _, last = collect(iter(events))
        assert text == hf_greedy(prompt, 32), prompt
        assert last.finish_reason in ("stop", "length")


def test_non_streaming_sends_one_response(server):
    events = run(server, PROMPTS[1], {"max_tokens": 12}, stream=False)
    with_text = [e for e in events if e.text]
    assert len(with_text) == 1 and with_text[0].finish_reason == "length" and events[-1].final


def test_concurrent_streams_and_cancellation(server):
    """Cancel one long stream mid-generation; the others finish exactly as they would alone."""
    sampling = {"max_tokens": 40, "temperature": 0, "ignore_eos": True}
    alone = {p: collect(iter(run(server, p, sampling)))[0] for p in PROMPTS}
    results: dict[str, str] = {}

    def worker(prompt):
        results[prompt] = collect(iter(run(server, prompt, sampling)))[0]

    threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS]
    victim = StreamingClient(server.grpc_url)
    request_id = victim.send(LLM_MODEL, generator_inputs(PROMPTS[0], {"max_tokens": 1000, "ignore_eos": True}))
    for t in threads:
        t.start()
    received = 0
    for event in victim.receive(request_id, timeout=120):
        received += bool(event.text)
        if received >= 5:
            break
    victim.client.stop_stream(cancel_requests=True)
    for t in threads:
        t.join(timeout=300)
    assert results == alone
    assert wait_for(lambda: metric(server, "tritonrag_num_requests_running") == 0)
    assert wait_for(lambda: metric(server, "tritonrag_kv_cache_usage_perc") == 0.0), "cancelled request kept its blocks"
    assert metric(server, "tritonrag_request_success_total", finished_reason="abort") >= 1


def test_invalid_sampling_parameters(server):
    for bad, fragment in [
        ({"temperature": -2}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": -1}, "max_tokens"),
    ]:
        error = run(server, "hi", bad)[-1].error
        assert error is not None and fragment in error.message(), error  # streams carry no status code


def test_metrics_on_endpoint(server):
    run(server, PROMPTS[1], {"max_tokens": 4})
    assert metric(server, "tritonrag_time_to_first_token_seconds_count", model="generator") >= 1
    assert metric(server, "tritonrag_generation_tokens_total") >= 4
    assert metric(server, "tritonrag_prompt_tokens_total") >= 1
    assert metric(server, "nv_inference_request_success", model="generator") >= 1
    for name in (
        "tritonrag_inter_token_latency_seconds_count",
        "tritonrag_e2e_request_latency_seconds_count",
        "tritonrag_num_requests_waiting",
        "tritonrag_prefix_cache_hit_rate",
        "tritonrag_num_preemptions_total",
    ):
        metric(server, name)


def test_shared_prefix_hits_the_cache(server):
    prefix = "You are a careful assistant. " * 30
    run(server, prefix + "Say one.", {"max_tokens": 2})
    events = run(server, prefix + "Say two.", {"max_tokens": 2})
    assert events[-1].final
    assert metric(server, "tritonrag_prefix_cache_hit_rate") > 0


def test_invalid_sampling_parameters_are_400_over_http(server):
    body = {"text_input": "hi", "sampling_parameters": '{"temperature": -1}'}
    response = requests.post(f"http://{server.http_url}/v2/models/{LLM_MODEL}/generate", json=body, timeout=60)
    assert response.status_code == 400 and "temperature must be >= 0" in response.json()["error"]
