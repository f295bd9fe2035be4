"""Canary routing without a server: the split, stickiness, distribution, pins, the weights file, status maths."""

import json
import os
import random

import pytest

from tritonrag.errors import InvalidInput, Unavailable
from tritonrag.triton.canary import (
    Route,
    RoutingConfig,
    WeightsFile,
    avoid_dead,
    check_pin,
    choose,
    parse_pin,
    promote,
    read_config,
    rollback,
    set_split,
    sticky_fraction,
    write_config,
)
from tritonrag.triton.versioning import split_parameters, version_parameters
from tritonrag_clients.canary import delta, parse_metrics, quantile, render_status, total, version_rows

CANARY_10 = RoutingConfig(stable_version=1, canary_version=2, canary_weight=0.1)


# ---- the config ----


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"stable_version": 0}, "stable_version must be a positive integer"),
        ({"stable_version": True}, "stable_version must be a positive integer"),
        ({"canary_version": 1}, "both 1"),
        ({"canary_version": 2, "canary_weight": 1.5}, "canary_weight must be a number in [0, 1]"),
        ({"canary_version": 2, "shadow_weight": -0.1}, "shadow_weight must be a number in [0, 1]"),
        ({"canary_weight": 0.2}, "no canary_version is set"),
        ({"canary_version": 2, "canary_weight": "0.1"}, "canary_weight must be a number"),
    ],
)
def test_invalid_configs_are_refused(bad, fragment):
    with pytest.raises(ValueError) as info:
        RoutingConfig(**bad)
    assert fragment in str(info.value)


def test_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match="unknown routing config keys: canary_wieght"):
        RoutingConfig.from_dict({"stable_version": 1, "canary_wieght": 0.1})
    assert RoutingConfig.from_dict({**CANARY_10.to_dict(), "updated_at": "now"}) == CANARY_10


def test_from_parameters_reads_config_pbtxt_strings():
    params = {"stable_version": "1", "canary_version": "2", "canary_weight": "0.25", "shadow_weight": "0"}
    assert RoutingConfig.from_parameters(params) == RoutingConfig(1, 2, 0.25, 0.0)
    assert RoutingConfig.from_parameters({"canary_version": ""}) == RoutingConfig(1, None)


def test_set_promote_rollback():
    config = set_split(CANARY_10, canary_weight=0.3, shadow_weight=0.2)
    assert config == RoutingConfig(1, 2, 0.3, 0.2)
    assert rollback(config) == RoutingConfig(1, 2, 0.0, 0.0)
    assert promote(config) == RoutingConfig(stable_version=2)
    with pytest.raises(ValueError, match="no canary to promote"):
        promote(RoutingConfig(stable_version=2))
    with pytest.raises(ValueError):
        set_split(RoutingConfig(stable_version=2), canary_weight=0.1)  # no canary named


# ---- routing ----


def test_random_split_lands_on_the_weight():
    rng = random.Random(7)
    for weight in (0.0, 0.1, 0.5, 1.0):
        config = RoutingConfig(1, 2, weight)
        canary = sum(choose(config, rng=rng).version == 2 for _ in range(20000))
        assert abs(canary / 20000 - weight) < 0.01, weight


def test_sticky_keys_split_by_weight_and_never_move_while_weights_stand():
    keys = [f"user-{i}" for i in range(20000)]
    first = {key: choose(CANARY_10, key=key).version for key in keys}
    assert abs(sum(v == 2 for v in first.values()) / len(keys) - 0.1) < 0.01
    rng = random.Random(1)  # the random source must not matter for keyed requests
    assert all(choose(CANARY_10, key=key, rng=rng).version == first[key] for key in keys[:2000])
    assert all(choose(CANARY_10, key=key).mode == "sticky" for key in keys[:10])


def test_raising_the_weight_only_moves_keys_to_the_canary():
    keys = [f"session-{i}" for i in range(5000)]
    previous = {key: 1 for key in keys}
    for weight in (0.05, 0.1, 0.3, 0.7, 1.0):
        now = {key: choose(RoutingConfig(1, 2, weight), key=key).version for key in keys}
        assert all(now[key] == 2 for key in keys if previous[key] == 2), weight
        previous = now
    assert set(previous.values()) == {2}


def test_sticky_hash_is_stable_and_uniform():
    # Fixed values: the same key maps to the same fraction on every host, process and release.
    assert sticky_fraction("user-42") == sticky_fraction(b"user-42")
    assert sticky_fraction("user-42") == pytest.approx(
        int.from_bytes(__import__("hashlib").sha256(b"user-42").digest()[:8], "big") / 2**64
    )
    fractions = [sticky_fraction(f"k{i}") for i in range(10000)]
    assert 0 <= min(fractions) and max(fractions) < 1
    assert all(
        abs(sum(lo <= f < lo + 0.1 for f in fractions) / 10000 - 0.1) < 0.015 for lo in [i / 10 for i in range(10)]
    )


def test_empty_key_is_random():
    assert choose(CANARY_10, key=b"", rng=random.Random(0)).mode == "random"


def test_pin_wins_over_weights_and_key():
    assert choose(RoutingConfig(1, 2, 1.0), key="x", pin=1) == Route(1, "pinned")
    assert choose(RoutingConfig(1, 2, 0.0), pin=2) == Route(2, "pinned")


def test_shadow_mirrors_a_share_of_stable_traffic_to_the_canary():
    rng = random.Random(3)
    config = RoutingConfig(1, 2, canary_weight=0.2, shadow_weight=0.5)
    routes = [choose(config, rng=rng) for _ in range(20000)]
    stable = [r for r in routes if r.version == 1]
    assert all(r.shadow is None for r in routes if r.version == 2)  # the canary is not mirrored to itself
    assert abs(sum(r.shadow == 2 for r in stable) / len(stable) - 0.5) < 0.02
    assert all(r.shadow is None for r in (choose(rollback(config), rng=rng) for _ in range(1000)))


def test_no_canary_means_stable_only():
    config = RoutingConfig(stable_version=3)
    assert {choose(config, key=f"k{i}").version for i in range(100)} == {3}


# ---- pins ----


@pytest.mark.parametrize("raw, expected", [(None, None), (b"", None), (b"  ", None), (b"2", 2), ("12", 12)])
def test_parse_pin(raw, expected):
    assert parse_pin(raw) == expected


@pytest.mark.parametrize("raw", [b"0", b"-1", b"two", b"1.5", b"\xff"])
def test_parse_pin_rejects_non_versions(raw):
    with pytest.raises(InvalidInput, match="model_version must be a positive integer"):
        parse_pin(raw)


def test_pin_to_unavailable_version_names_what_is_served():
    ready = {1, 2}.__contains__
    assert check_pin(2, ready, CANARY_10) == 2
    with pytest.raises(InvalidInput) as info:
        check_pin(7, ready, CANARY_10)
    assert (
        str(info.value)
        == "generator version 7 is not available (not in the repository or not loaded); routed versions are 1, 2"
    )


# ---- the weights file ----


def test_a_dead_version_is_routed_around_and_a_pin_to_it_refused():
    # The split drew the canary (2), whose stub has exited: the stable version takes the request, same mode.
    assert avoid_dead(Route(2, "sticky"), CANARY_10, {2}) == Route(1, "sticky")
    assert avoid_dead(Route(1, "random", shadow=2), CANARY_10, {1}) == Route(2, "random")
    assert avoid_dead(Route(1, "random", shadow=2), CANARY_10, {2}) == Route(1, "random"), "mirror dropped"
    assert avoid_dead(Route(1, "random", shadow=2), CANARY_10, set()) == Route(1, "random", shadow=2)
    with pytest.raises(Unavailable, match="generator version 2 is not healthy: its stub process exited; unpin"):
        avoid_dead(Route(2, "pinned"), CANARY_10, {2})
    assert avoid_dead(Route(1, "pinned"), CANARY_10, {2}) == Route(1, "pinned")
    with pytest.raises(Unavailable, match="no other routed version is healthy"):
        avoid_dead(Route(1, "random"), CANARY_10, {1, 2})
    with pytest.raises(Unavailable, match="no other routed version"):
        avoid_dead(Route(1, "random"), RoutingConfig(stable_version=1), {1})


def test_weights_file_default_then_file_then_change(tmp_path):
    path = tmp_path / "canary.json"
    default = RoutingConfig(1, 2, 0.0)
    weights = WeightsFile(path, default)
    assert weights.current() == default
    write_config(path, CANARY_10)
    assert weights.current() == CANARY_10
    write_config(path, rollback(CANARY_10))
    assert weights.current() == rollback(CANARY_10)
    path.unlink()
    assert weights.current() == default


def test_bad_file_keeps_last_good_split_and_reports(tmp_path):
    path = tmp_path / "canary.json"
    write_config(path, CANARY_10)
    weights = WeightsFile(path, RoutingConfig())
    assert weights.current() == CANARY_10
    path.write_text('{"stable_version": 1, "canary_version": 2, "canary_weight": 7}')
    assert weights.current() == CANARY_10 and "canary_weight must be a number in [0, 1]" in weights.error
    path.write_text("{not json")
    assert weights.current() == CANARY_10 and "not valid JSON" in weights.error
    write_config(path, rollback(CANARY_10))
    assert weights.current() == rollback(CANARY_10) and weights.error is None


def test_rewrite_with_same_size_and_mtime_is_still_seen(tmp_path):
    """write_config renames a new file into place: a new inode even if size and mtime match."""
    path = tmp_path / "canary.json"
    write_config(path, RoutingConfig(1, 2, 0.1))
    weights = WeightsFile(path, RoutingConfig())
    assert weights.current().canary_weight == 0.1
    stat = os.stat(path)
    write_config(path, RoutingConfig(1, 2, 0.2))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.current().canary_weight == 0.2


def test_written_file_is_plain_json(tmp_path):
    path = tmp_path / "sub" / "canary.json"
    write_config(path, CANARY_10)
    data = json.loads(path.read_text())
    assert data["canary_weight"] == 0.1 and "updated_at" in data
    assert read_config(path) == CANARY_10
    assert [p.name for p in path.parent.iterdir()] == ["canary.json"]  # no temporary file left


# ---- per-version parameters ----


def test_version_parameters_override_only_their_version():
    params = {
        "dtype": "float32",
        "kv_cache_memory_bytes": "512",
        "v2:dtype": "bfloat16",
        "v3:kv_cache_memory_bytes": "128",
    }
    assert version_parameters(params, "1") == {"dtype": "float32", "kv_cache_memory_bytes": "512"}
    assert version_parameters(params, 2) == {"dtype": "bfloat16", "kv_cache_memory_bytes": "512"}
    assert version_parameters(params, "3") == {"dtype": "float32", "kv_cache_memory_bytes": "128"}
    shared, overrides = split_parameters(params)
    assert set(shared) == {"dtype", "kv_cache_memory_bytes"} and set(overrides) == {2, 3}


@pytest.mark.parametrize("key", ["v:dtype", "version2:dtype", "v2:", "2:dtype"])
def test_malformed_version_keys_are_errors(key):
    with pytest.raises(ValueError, match="v<version>:<name>"):
        split_parameters({key: "x"})


# ---- status maths (the client reads /metrics) ----

METRICS = """
# HELP tritonrag_e2e_request_latency_seconds End-to-end request latency
# TYPE tritonrag_e2e_request_latency_seconds histogram
tritonrag_e2e_request_latency_seconds_bucket{model="generator",version="1",le="0.1"} 50
tritonrag_e2e_request_latency_seconds_bucket{model="generator",version="1",le="0.5"} 90
tritonrag_e2e_request_latency_seconds_bucket{model="generator",version="1",le="1"} 100
tritonrag_e2e_request_latency_seconds_bucket{model="generator",version="1",le="+Inf"} 100
tritonrag_e2e_request_latency_seconds_count{model="generator",version="1"} 100
tritonrag_router_requests_total{mode="random",model="generator",version="1"} 90
tritonrag_router_requests_total{mode="sticky",model="generator",version="2"} 8
tritonrag_router_requests_total{mode="shadow",model="generator",version="2"} 2
tritonrag_router_failures_total{mode="sticky",model="generator",version="2"} 1
tritonrag_router_weight{model="generator",role="stable",version="1"} 0.9
tritonrag_router_weight{model="generator",role="canary",version="2"} 0.1
nv_inference_request_success{model="generator",version="2"} 9
nv_inference_request_success{model="rag",version="1"} 4
"""


def test_parse_and_sum_metrics():
    samples = parse_metrics(METRICS)
    assert total(samples, "tritonrag_router_requests_total", version="2") == 10
    assert total(samples, "nv_inference_request_success", model="generator") == 9


def test_histogram_quantile_interpolates_like_prometheus():
    samples = parse_metrics(METRICS)
    assert quantile(samples, "tritonrag_e2e_request_latency_seconds", 0.5, version="1") == pytest.approx(0.1)
    assert quantile(samples, "tritonrag_e2e_request_latency_seconds", 0.7, version="1") == pytest.approx(0.3)
    assert quantile(samples, "tritonrag_e2e_request_latency_seconds", 0.95, version="1") == pytest.approx(0.75)
    assert quantile(samples, "tritonrag_e2e_request_latency_seconds", 0.5, version="9") is None


def test_version_rows_and_rendering():
    rows = {row["version"]: row for row in version_rows(parse_metrics(METRICS))}
    assert set(rows) == {"1", "2"}
    assert rows["2"]["routed"] == {"pinned": 0, "sticky": 8, "random": 0, "shadow": 2}
    assert rows["2"]["error_rate"] == pytest.approx(0.1) and rows["1"]["error_rate"] == 0
    assert rows["2"]["roles"] == {"canary": 0.1}
    text = render_status(CANARY_10, "test", list(rows.values()), None)
    assert "stable 1 90.0%, canary 2 10.0%" in text and "100/750/950" in text


def test_delta_between_scrapes():
    before = parse_metrics(METRICS)
    after = parse_metrics(METRICS.replace("} 90\n", "} 95\n"))
    grown = delta(after, before)
    assert total(grown, "tritonrag_router_requests_total", mode="random") == 5
    assert total(grown, "tritonrag_router_weight", role="stable") == 0.9  # a gauge keeps its value
