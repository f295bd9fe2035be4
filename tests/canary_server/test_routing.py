"""Versioned generators and canary routing through a real tritonserver.

1000 requests at 10% land 10% +- 3% on the canary; a key always gets the same version;
weights change mid-load without dropping a stream; rollback sends nothing more to the
canary; shadow mirrors and discards; pins, including unknown versions; the CLI.
"""

import json
import time

import requests
from canary_helpers import (
    DEFAULT_SPLIT,
    ROUTER,
    metric,
    router_inputs,
    scrape,
    set_split,
    versions_of,
    wait_for,
)

from tritonrag.triton.canary import RoutingConfig, choose, read_config
from tritonrag_clients import canary as canary_cli
from tritonrag_clients.canary import quantile, total
from tritonrag_clients.streaming import StreamingClient, bytes_input, rag_inputs

GEN = {"model": "generator"}


def canary_traffic(server) -> float:
    """Everything the canary has received: routed by the router (any mode) and counted by Triton."""
    samples = scrape(server)
    return total(samples, "tritonrag_router_requests_total", version="2", **GEN) + total(
        samples, "nv_inference_request_success", version="2", **GEN
    )


def test_thousand_requests_at_ten_percent(server, streams, weights_file):
    set_split(weights_file, canary_weight=0.1)
    before = scrape(server)
    start = time.monotonic()
    results = streams.wait([streams.send(router_inputs()) for _ in range(1000)])
    elapsed = time.monotonic() - start
    assert not streams.stray_errors
    canary = versions_of(results).count(2)
    assert 70 <= canary <= 130, f"{canary} of 1000 on the canary at 10%"
    assert versions_of(results).count(1) == 1000 - canary

    # The router's counters and Triton's own per-version counters agree with what clients saw.
    def grown(name, **labels):
        return total(scrape(server), name, **labels) - total(before, name, **labels)

    assert grown("tritonrag_router_requests_total", mode="random", version="2", **GEN) == canary
    assert grown("tritonrag_router_requests_total", mode="random", version="1", **GEN) == 1000 - canary
    assert wait_for(lambda: grown("nv_inference_request_success", version="2", **GEN) == canary)
    assert wait_for(lambda: grown("tritonrag_e2e_request_latency_seconds_count", version="1", **GEN) == 1000 - canary)
    print(f"1000 routed requests (max_tokens 1) in {elapsed:.1f} s; {canary} on the canary")


def test_a_key_always_lands_on_the_same_version(server, streams, weights_file):
    config = set_split(weights_file, canary_weight=0.5)
    keys = [f"user-{i}" for i in range(40)]
    sent = [(key, streams.send(router_inputs(key=key))) for _ in range(4) for key in keys]
    streams.wait([result for _, result in sent])
    served: dict[str, set[int]] = {}
    for key, result in sent:
        served.setdefault(key, set()).add(result.version)
    assert all(len(versions) == 1 for versions in served.values()), served
    assert {next(iter(v)) for v in served.values()} == {1, 2}, "at 50% both versions should have keys"
    assert all(served[key] == {choose(config, key=key).version} for key in keys), (
        "the server hashes as the library does"
    )
    # Raising the weight moves keys only towards the canary.
    set_split(weights_file, canary_weight=0.9)
    later = {key: streams.one(router_inputs(key=key)).version for key in keys}
    assert all(later[key] == 2 for key in keys if served[key] == {2})
    # Through the rag ensemble: the key reaches the router and the served version comes back.
    rag = [
        streams.one(
            rag_inputs("What is a tuple?", sampling={"max_tokens": 1}) + [bytes_input("routing_key", "user-3")], "rag"
        )
        for _ in range(2)
    ]
    assert [r.version for r in rag] == [later["user-3"]] * 2


def test_weight_changes_mid_load_drop_no_stream(server, streams, weights_file):
    sampling = {"max_tokens": 48, "temperature": 0, "ignore_eos": True}
    set_split(weights_file, canary_weight=0.5)
    first = [streams.send(router_inputs("Count slowly:", sampling, key=f"s{i}")) for i in range(24)]
    assert wait_for(lambda: sum(bool(r.text) for r in first) >= 12, timeout=60), "streams did not start"
    second, in_flight = [], []
    for weight in (0.0, 1.0, 0.3, 0.0):  # change the split while the first wave is streaming
        set_split(weights_file, canary_weight=weight)
        in_flight.append(sum(not r.done.is_set() for r in first))
        second.append(streams.send(router_inputs("Count slowly:", sampling, key="late")))
        time.sleep(0.3)
    assert in_flight[0] >= 12, f"only {in_flight[0]} streams in flight when the weights changed"
    results = streams.wait(first + second)
    assert not streams.stray_errors
    for result in results:
        assert result.error is None and result.finish_reason == "length" and result.num_output_tokens == 48, result
        assert len(set(result.versions)) == 1, "a stream never switches version"
    assert [r.version for r in second] == [1, 2, choose(RoutingConfig(1, 2, 0.3), key="late").version, 1]


def test_rollback_sends_nothing_more_to_the_canary(server, streams, weights_file):
    set_split(weights_file, canary_weight=0.5, shadow_weight=0.5)
    warm = streams.wait([streams.send(router_inputs(key=f"k{i}")) for i in range(20)])
    assert 2 in versions_of(warm)
    assert canary_cli.main(["--file", str(weights_file), "--http-url", server.http_url, "rollback"]) == 0
    assert read_config(weights_file) == RoutingConfig(1, 2, 0.0, 0.0)
    assert wait_for(lambda: metric(server, "nv_inference_pending_request_count", version="2", **GEN) == 0)
    time.sleep(0.5)  # let the last shadow's counters settle
    before = canary_traffic(server)
    after_rollback = [streams.send(router_inputs(key=f"k{i}")) for i in range(100)]
    after_rollback += [streams.send(router_inputs()) for _ in range(100)]
    assert set(versions_of(streams.wait(after_rollback))) == {1}
    time.sleep(1.0)
    assert canary_traffic(server) == before


def test_shadow_mirrors_to_the_canary_and_discards_its_output(server, streams, weights_file, capsys):
    assert canary_cli.main(["--file", str(weights_file), "--http-url", server.http_url, "shadow", "1.0"]) == 0
    assert read_config(weights_file).shadow_weight == 1.0
    labels = {"version": "2", **GEN}
    routed_before = metric(server, "tritonrag_router_requests_total", mode="shadow", **labels)
    skipped_before = metric(server, "tritonrag_router_shadow_skipped_total", **labels)
    served_before = metric(server, "nv_inference_request_success", **labels)
    results = [streams.one(router_inputs(sampling={"max_tokens": 2})) for _ in range(12)]
    assert all(r.versions == [1] * len(r.versions) and r.versions for r in results), (
        "clients see only the stable answer"
    )
    mirrored = metric(server, "tritonrag_router_requests_total", mode="shadow", **labels) - routed_before
    skipped = metric(server, "tritonrag_router_shadow_skipped_total", **labels) - skipped_before
    assert mirrored + skipped == 12 and mirrored >= 6
    assert wait_for(lambda: metric(server, "nv_inference_request_success", **labels) - served_before == mirrored)


def test_pinning(server, streams, weights_file):
    set_split(weights_file, canary_weight=1.0)
    assert streams.one(router_inputs(pin="1", key="anyone")).version == 1
    assert streams.one(router_inputs(pin="2")).version == 2
    rag = streams.one(
        rag_inputs("What is a set?", sampling={"max_tokens": 1}) + [bytes_input("model_version", "1")], "rag"
    )
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


def test_versions_run_their_own_settings_and_report_metrics_by_version(server, streams, weights_file):
    log = server.log_path.read_text()
    assert "generator version 1: EngineConfig(" in log and "generator version 2: EngineConfig(" in log
    v1 = log.split("generator version 1: EngineConfig(")[1].split(")")[0]
    v2 = log.split("generator version 2: EngineConfig(")[1].split(")")[0]
    assert "dtype='float32'" in v1 and "kv_cache_memory_bytes=536870912" in v1
    assert "dtype='bfloat16'" in v2 and "kv_cache_memory_bytes=134217728" in v2 and "max_num_seqs=16" in v2
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
    try:
        canary_cli.main([*common, "set", "--canary-version", "5"])
    except SystemExit as exc:
        assert "generator version 5 is not ready" in str(exc)
    else:
        raise AssertionError("setting an unloaded canary version should fail")
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
    """The router cannot cancel its BLS request, so it sends the generator an abort by request id:
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
