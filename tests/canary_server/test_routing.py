"""Versioned generators and canary routing through a real tritonserver, with RAG-length prompts.

Version 2 (ONNX Runtime, a 256-token step budget) serves `rag` prompts of several passages at
concurrency, as version 1 does; 1000 keyed requests with a RAG prompt at 10% land 10% +- 3% on
the canary, and keyed `rag` requests land where their key says (1000 of them under
TRITONRAG_SLOW=1: about 15 minutes here); a key always gets the same version; weights change mid-load without dropping a stream;
rollback sends nothing more to the canary; shadow mirrors, discards and compares greedy
outputs; pins, including unknown versions; the CLI.
"""

import json
import os
import time

import pytest
import requests
from canary_helpers import (
    DEFAULT_SPLIT,
    QUESTIONS,
    ROUTER,
    metric,
    rag_prompts,
    router_inputs,
    scrape,
    set_split,
    versions_of,
)

from polling import wait_for
from tritonrag import metrics
from tritonrag.triton.canary import RoutingConfig, choose, read_config
from tritonrag_clients import canary as canary_cli
from tritonrag_clients.canary import quantile, total
from tritonrag_clients.streaming import StreamingClient, bytes_input, rag_inputs

GEN = {"model": "generator"}
V2_STEP_BUDGET = 256  # v2:max_num_batched_tokens in model_repository/generator/config.pbtxt


@pytest.fixture(scope="module")
def rag_prompt() -> str:
    """One RAG-length prompt (the prompt builder over five passages) for the router-level tests."""
    return rag_prompts(1)[0]


def keyed_rag(query: str, key: str, sampling: dict | None = None, pin: str | None = None) -> list:
    inputs = rag_inputs(query, top_k=5, sampling=sampling or {"max_tokens": 1, "temperature": 0})
    inputs.append(bytes_input("routing_key", key))
    if pin is not None:
        inputs.append(bytes_input("model_version", pin))
    return inputs


def canary_traffic(server) -> float:
    """Everything the canary has received: routed by the router (any mode) and counted by Triton."""
    samples = scrape(server)
    return total(samples, "tritonrag_router_requests_total", version="2", **GEN) + total(
        samples, "nv_inference_request_success", version="2", **GEN
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_rag_prompts_at_concurrency_on_each_version(server, streams, version):
    """Eight `rag` requests at once pinned to one version: real retrieval, five passages each, prompts
    longer than version 2's step budget (so steps carry prefill chunks and no sampling row)."""
    labels = {"version": version, **GEN}
    computed = metric(server, metrics.PROMPT_TOKENS.name, **labels)
    sent = [
        streams.send(keyed_rag(q, f"u{i}", {"max_tokens": 8, "temperature": 0}, pin=version), "rag")
        for i, q in enumerate(QUESTIONS)
    ]
    results = streams.wait(sent, timeout=600)
    assert not streams.stray_errors
    for result in results:
        assert result.error is None, result.error
        assert result.versions and set(result.versions) == {int(version)} and result.text
    assert metric(server, "nv_inference_request_failure", **labels) == 0
    # Prompt tokens the engine computed (prefix-cache hits not counted): more than a v2 step per request.
    grown = metric(server, metrics.PROMPT_TOKENS.name, **labels) - computed
    assert grown > len(QUESTIONS) * V2_STEP_BUDGET, f"{grown} prompt tokens for {len(QUESTIONS)} RAG prompts"


def test_version_two_runs_onnxruntime_with_its_own_settings(server):
    log = server.log_path.read_text()
    v1 = log.split("generator version 1: EngineConfig(")[1].split(")")[0]
    v2 = log.split("generator version 2: EngineConfig(")[1].split(")")[0]
    assert "runtime='torch'" in v1 and "kv_cache_memory_bytes=536870912" in v1
    assert "runtime='onnxruntime'" in v2 and "max_num_batched_tokens=256" in v2 and "max_num_seqs=16" in v2
    assert "generator version 2: runtime onnxruntime" in log, "version 2 fell back from ONNX Runtime"


def split_of(server, streams, weights_file, keys: list[str], inputs_for, model: str, weight: float) -> list[int]:
    """Send one request per key (48 in flight at a time); each must land where the library's hash puts it,
    and the router's and Triton's counters must agree with what the clients saw."""
    config = set_split(weights_file, canary_weight=weight)
    before = scrape(server)
    start = time.monotonic()
    results = streams.send_many([inputs_for(i, key) for i, key in enumerate(keys)], model, timeout=3000)
    elapsed = time.monotonic() - start
    assert not streams.stray_errors and all(r.error is None for r in results)
    served = versions_of(results)
    assert served == [choose(config, key=key).version for key in keys]

    def grown(name, **labels):
        return total(scrape(server), name, **labels) - total(before, name, **labels)

    canary = served.count(2)
    assert grown("tritonrag_router_requests_total", mode="sticky", version="2", **GEN) == canary
    assert grown("tritonrag_router_requests_total", mode="sticky", version="1", **GEN) == len(keys) - canary
    succeeded = lambda: grown("nv_inference_request_success", version="2", **GEN)  # noqa: E731
    assert wait_for(lambda: succeeded() == canary), f"Triton counted {succeeded()} on the canary, clients {canary}"
    print(f"{len(keys)} keyed requests to {model} (max_tokens 1) in {elapsed:.1f} s; {canary} on the canary")
    return served


def test_thousand_keyed_requests_with_a_rag_prompt_at_ten_percent(server, streams, weights_file, rag_prompt):
    """1000 distinct keys, each with a RAG-length prompt (one token each): 10% +- 3% on the canary."""
    keys = [f"user-{i}" for i in range(1000)]
    served = split_of(
        server, streams, weights_file, keys, lambda i, key: router_inputs(rag_prompt, key=key), ROUTER, 0.1
    )
    assert 70 <= served.count(2) <= 130, f"{served.count(2)} of 1000 on the canary at 10%"


def test_keyed_rag_requests_land_where_their_key_says(server, streams, weights_file):
    """Through `rag` (real retrieval and prompts): the key reaches the router and decides the version."""
    keys = [f"visitor-{i}" for i in range(60)]
    served = split_of(server, streams, weights_file, keys, lambda i, key: keyed_rag(QUESTIONS[i % 4], key), "rag", 0.3)
    assert set(served) == {1, 2}


@pytest.mark.skipif(
    os.environ.get("TRITONRAG_SLOW") != "1", reason="~15 min on the loaded 2-core CPU: TRITONRAG_SLOW=1"
)
@pytest.mark.timeout(3600)
def test_thousand_keyed_rag_requests_at_ten_percent(server, streams, weights_file):
    """1000 distinct keys through `rag` (one token each): 10% +- 3% on the canary. Questions come in blocks,
    so the prefix cache holds them."""
    keys = [f"user-{i}" for i in range(1000)]
    served = split_of(
        server, streams, weights_file, keys, lambda i, key: keyed_rag(QUESTIONS[i * len(QUESTIONS) // 1000], key),
        "rag", 0.1,
    )  # fmt: skip
    assert 70 <= served.count(2) <= 130, f"{served.count(2)} of 1000 on the canary at 10%"


def test_a_key_always_lands_on_the_same_version(server, streams, weights_file, rag_prompt):
    config = set_split(weights_file, canary_weight=0.5)
    keys = [f"user-{i}" for i in range(40)]
    sent_keys = [key for _ in range(3) for key in keys]
    results = streams.send_many([router_inputs(rag_prompt, key=key) for key in sent_keys])
    served: dict[str, set[int]] = {}
    for key, result in zip(sent_keys, results):
        served.setdefault(key, set()).add(result.version)
    assert all(len(versions) == 1 for versions in served.values()), served
    assert {next(iter(v)) for v in served.values()} == {1, 2}, "at 50% both versions should have keys"
    assert all(served[key] == {choose(config, key=key).version} for key in keys)
    # Raising the weight moves keys only towards the canary.
    set_split(weights_file, canary_weight=0.9)
    later = {key: streams.one(router_inputs(rag_prompt, key=key)).version for key in keys}
    assert all(later[key] == 2 for key in keys if served[key] == {2})
    # Through the rag ensemble: the key reaches the router and the served version comes back.
    rag = [streams.one(keyed_rag("What is a tuple?", "user-3"), "rag") for _ in range(2)]
    assert [r.version for r in rag] == [later["user-3"]] * 2


def test_weight_changes_mid_load_drop_no_stream(server, streams, weights_file, rag_prompt):
    sampling = {"max_tokens": 32, "temperature": 0, "ignore_eos": True}
    set_split(weights_file, canary_weight=0.5)
    first = [streams.send(router_inputs(rag_prompt, sampling, key=f"s{i}")) for i in range(16)]
    assert wait_for(lambda: sum(bool(r.text) for r in first) >= 8, timeout=180), "streams did not start"
    second, in_flight = [], []
    for weight in (0.0, 1.0, 0.3, 0.0):  # change the split while the first wave is streaming
        set_split(weights_file, canary_weight=weight)
        in_flight.append(sum(not r.done.is_set() for r in first))
        second.append(streams.send(router_inputs(rag_prompt, sampling, key="late")))
        time.sleep(0.3)
    assert in_flight[0] >= 8, f"only {in_flight[0]} streams in flight when the weights changed"
    results = streams.wait(first + second, timeout=600)
    assert not streams.stray_errors
    for result in results:
        assert result.error is None and result.finish_reason == "length" and result.num_output_tokens == 32, result
        assert len(set(result.versions)) == 1, "a stream never switches version"
    assert [r.version for r in second] == [1, 2, choose(RoutingConfig(1, 2, 0.3), key="late").version, 1]


def test_rollback_sends_nothing_more_to_the_canary(server, streams, weights_file, rag_prompt):
    set_split(weights_file, canary_weight=0.5, shadow_weight=0.5)
    warm = streams.wait([streams.send(router_inputs(rag_prompt, key=f"k{i}")) for i in range(20)])
    assert 2 in versions_of(warm)
    assert canary_cli.main(["--file", str(weights_file), "--http-url", server.http_url, "rollback"]) == 0
    assert read_config(weights_file) == RoutingConfig(1, 2, 0.0, 0.0)
    assert wait_for(lambda: metric(server, "nv_inference_pending_request_count", version="2", **GEN) == 0)
    time.sleep(0.5)  # let the last shadow's counters settle
    before = canary_traffic(server)
    after_rollback = [router_inputs(rag_prompt, key=f"k{i}") for i in range(60)]
    after_rollback += [router_inputs(rag_prompt) for _ in range(60)]
    assert set(versions_of(streams.send_many(after_rollback))) == {1}
    time.sleep(1.0)
    assert canary_traffic(server) == before


def test_shadow_mirrors_discards_and_compares_greedy_outputs(server, streams, weights_file, rag_prompt):
    """Mirrors of greedy requests are compared with what the user got (exact text, length); sampled ones are not."""
    assert canary_cli.main(["--file", str(weights_file), "--http-url", server.http_url, "shadow", "1.0"]) == 0
    assert read_config(weights_file).shadow_weight == 1.0
    labels = {"version": "2", **GEN}
    names = ("tritonrag_router_requests_total", "tritonrag_router_shadow_skipped_total", "nv_inference_request_success")
    names += (metrics.ROUTER_SHADOW_COMPARED.name, metrics.ROUTER_SHADOW_EXACT.name, metrics.ROUTER_SHADOW_CHARS.name)
    before = {name: metric(server, name, **labels) for name in names}
    greedy = {"max_tokens": 12, "temperature": 0}
    results = [streams.one(router_inputs(rag_prompt, greedy)) for _ in range(6)]
    results += [
        streams.one(router_inputs(rag_prompt, {"max_tokens": 12, "temperature": 0.9, "seed": i})) for i in range(4)
    ]
    assert all(r.versions and set(r.versions) == {1} for r in results), "clients see only the stable answer"

    def grown(name):
        return metric(server, name, **labels) - before[name]

    mirrored, skipped = grown("tritonrag_router_requests_total"), grown("tritonrag_router_shadow_skipped_total")
    assert mirrored + skipped == 10 and mirrored >= 6
    assert wait_for(lambda: grown("nv_inference_request_success") == mirrored)
    # Every greedy mirror that ran was compared; no sampled one was.
    assert wait_for(lambda: grown(metrics.ROUTER_SHADOW_COMPARED.name) >= 1)
    compared, exact = grown(metrics.ROUTER_SHADOW_COMPARED.name), grown(metrics.ROUTER_SHADOW_EXACT.name)
    assert 6 - skipped <= compared <= 6 and 0 <= exact <= compared
    assert grown(metrics.ROUTER_SHADOW_CHARS.name) > 0, "compared pairs count their output lengths"
    print(f"shadow agreement on greedy RAG requests: {exact:.0f}/{compared:.0f} identical")


def test_pinning(server, streams, weights_file):
    set_split(weights_file, canary_weight=1.0)
    assert streams.one(router_inputs(pin="1", key="anyone")).version == 1
    assert streams.one(router_inputs(pin="2")).version == 2
    rag = streams.one(keyed_rag("What is a set?", "anyone", pin="1"), "rag")
    assert rag.version == 1


def test_pinning_an_unknown_version_is_a_clear_error(server, streams):
    expected = "generator version 7 is not available (not in the repository or not loaded); routed versions are 1, 2"
    assert streams.one(router_inputs(pin="7")).error == expected
    assert streams.one(rag_inputs("What is a set?") + [bytes_input("model_version", "7")], "rag").error.endswith(
        expected
    )
    assert "model_version must be a positive integer" in streams.one(router_inputs(pin="latest")).error
    body = {"text_input": "hi", "model_version": "7"}
    response = requests.post(f"http://{server.http_url}/v2/models/{ROUTER}/generate", json=body, timeout=60)
    assert response.status_code == 400 and response.json()["error"] == expected  # INVALID_ARG
    assert streams.one(router_inputs()).version == 1, "the server keeps serving"


def test_errors_of_the_chosen_version_reach_the_caller(server, streams):
    result = streams.one(router_inputs(sampling={"temperature": -1}))
    assert result.error and "temperature must be >= 0" in result.error
    body = {"text_input": "hi", "sampling_parameters": json.dumps({"top_p": 0})}
    response = requests.post(f"http://{server.http_url}/v2/models/{ROUTER}/generate", json=body, timeout=60)
    assert response.status_code == 400 and "top_p" in response.json()["error"]


def test_metrics_by_version_and_split(server, streams, weights_file):
    set_split(weights_file, canary_weight=0.25, shadow_weight=0.1)
    streams.wait([streams.send(router_inputs(sampling={"max_tokens": 4})) for _ in range(16)])
    samples = scrape(server)
    for version in ("1", "2"):
        labels = {"version": version, **GEN}
        assert total(samples, "nv_inference_request_success", **labels) > 0
        assert total(samples, "tritonrag_e2e_request_latency_seconds_count", **labels) > 0
        assert quantile(samples, "tritonrag_time_to_first_token_seconds", 0.5, **labels) is not None
    assert wait_for(lambda: metric(server, "tritonrag_router_weight", role="canary", version="2") == 0.25)
    assert metric(server, "tritonrag_router_weight", role="stable", version="1") == 0.75
    assert metric(server, "tritonrag_router_weight", role="shadow", version="2") == 0.1


def test_cli_status_set_promote(server, streams, weights_file, capsys):
    common = ["--file", str(weights_file), "--http-url", server.http_url, "--metrics-url", server.metrics_url]
    assert canary_cli.main([*common, "set", "--canary-weight", "0.2"]) == 0
    assert read_config(weights_file) == RoutingConfig(1, 2, 0.2)
    streams.wait([streams.send(router_inputs(key=f"c{i}")) for i in range(20)])
    assert wait_for(lambda: metric(server, "tritonrag_router_weight", role="canary", version="2") == 0.2)
    capsys.readouterr()
    assert canary_cli.main([*common, "status"]) == 0
    out = capsys.readouterr().out
    assert (
        "stable 1 80.0%, canary 2 20.0%" in out
        and "in force on the server (router): stable 1 80.0%, canary 2 20.0%" in out
    )
    rows = {
        line.split()[0]: line.split() for line in out.splitlines() if line.split() and line.split()[0] in ("1", "2")
    }
    assert set(rows) == {"1", "2"} and "-/-/-" not in rows["1"][-2]
    # A version that is not loaded is refused before anything is written.
    with pytest.raises(SystemExit, match="generator version 5 is not ready"):
        canary_cli.main([*common, "set", "--canary-version", "5"])
    assert read_config(weights_file) == RoutingConfig(1, 2, 0.2)
    # Promote: the canary takes everything, random and keyed.
    assert canary_cli.main([*common, "promote"]) == 0
    assert read_config(weights_file) == RoutingConfig(stable_version=2)
    promoted = [streams.send(router_inputs(key=f"c{i}")) for i in range(10)] + [
        streams.send(router_inputs()) for _ in range(10)
    ]
    assert set(versions_of(streams.wait(promoted))) == {2}
    assert canary_cli.main([*common, "rollback"]) == 0  # no canary left: rollback keeps stable 2
    assert read_config(weights_file) == RoutingConfig(stable_version=2)
    assert DEFAULT_SPLIT != read_config(weights_file)  # the autouse fixture restores it for the next test


def test_keyless_split_is_random(server, streams, weights_file):
    set_split(weights_file, canary_weight=0.5)
    versions = versions_of(streams.wait([streams.send(router_inputs()) for _ in range(40)]))
    assert 8 <= versions.count(2) <= 32


def test_cancelled_routed_stream_aborts_the_generator_request(server, streams):
    """A cancelled `llm` stream cancels the router's stream to the generator, which aborts the request:
    the sequence ends as `abort` (not `length`), its blocks are freed, serving goes on."""
    aborted = lambda: metric(server, "tritonrag_request_success_total", finished_reason="abort", version="1", **GEN)  # noqa: E731
    before = aborted()
    victim = StreamingClient(server.grpc_url)
    request_id = victim.send(ROUTER, router_inputs("Count:", {"max_tokens": 1500, "ignore_eos": True}))
    received = 0
    for event in victim.receive(request_id, timeout=120):
        received += bool(event.text)
        if received >= 3:
            break
    victim.client.stop_stream(cancel_requests=True)
    victim.client.close()
    # 1500 tokens would take minutes here: an `abort` within seconds is the abort, not the end.
    assert wait_for(lambda: aborted() > before, timeout=60), "the generator ran on after the cancel"
    assert metric(server, "tritonrag_router_aborted_total", version="1", **GEN) >= 1
    assert wait_for(lambda: metric(server, "tritonrag_num_requests_running", **GEN) == 0, timeout=30)
    assert wait_for(lambda: metric(server, "tritonrag_kv_cache_usage_perc", **GEN) == 0.0, timeout=30)
    assert streams.one(router_inputs()).version == 1
