"""Smoke run of the benchmark (`--quick`, engine, hf and precision targets, no server): the JSON has every number, and they are sane.

No timing assertions: the machine may be busy; only shapes, signs and orderings are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tritonrag.paths import generator_weights_dir

WEIGHTS = generator_weights_dir() / "model.safetensors"
pytestmark = pytest.mark.skipif(
    not WEIGHTS.exists(), reason=f"generator weights missing ({WEIGHTS}): run `make setup` first"
)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "tritonrag_bench",
        "--quick",
        "--targets",
        "engine,hf,precision",
        "--out",
        str(out / "result.json"),
        "--plot",
        str(out / "result.png"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # ~15 s when the machine is quiet
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "result.png").stat().st_size > 0
    return json.loads((out / "result.json").read_text())


def _check_percentiles(stats: dict) -> None:
    assert 0 <= stats["p50"] <= stats["p95"] <= stats["p99"]


def test_top_level_keys(result):
    assert {"settings", "machine", "ceiling", "workload", "results", "kv_cache", "prefix_cache", "targets"} <= set(
        result
    )
    assert set(result["results"]) == {"engine", "hf"}
    assert result["machine"]["usable_cores"] >= 1 and result["machine"]["cpu"]
    assert result["ceiling"]["read_bandwidth_gb_s"] > 0 and result["ceiling"]["matmul_gflop_s"] > 0


def test_every_level_has_sane_metrics(result):
    levels = [str(c) for c in result["settings"]["concurrency"]]
    for target in ("engine", "hf"):
        assert sorted(result["results"][target], key=int) == levels
        for c in levels:
            m = result["results"][target][c]
            workload = result["workload"][c]
            assert m["num_requests"] == workload["num_requests"]
            # every request got exactly the output length it asked for (ignore_eos + max_tokens)
            assert m["output_tokens"] == round(workload["output_tokens"]["mean"] * workload["num_requests"])
            assert m["output_tok_s"] > 0 and m["req_s"] > 0 and m["ceiling_tok_s"] > 0
            for key in ("ttft_s", "itl_s", "e2e_s"):
                _check_percentiles(m[key])
            assert m["ratio_vs_hf"] > 0


def test_kv_waste_and_contiguous_comparison(result):
    for c, kv in result["kv_cache"].items():
        peak = kv["peak"]
        assert 0 <= peak["waste"] <= 1
        assert 0 <= kv["mean_waste_over_steps"] <= 1
        assert 0 < peak["held_tokens"] <= peak["allocated_slots"]
        assert peak["running"] <= int(c)
        # the paged cache never allocates more than reserving max_model_len per request would
        assert peak["allocated_slots"] <= peak["contiguous_max_len_slots"]
        assert 0 <= peak["contiguous_max_len_waste"] <= 1


def test_prefix_scenario_hits_the_cache(result):
    prefix = result["prefix_cache"]
    block = result["settings"]["block_size"]
    assert prefix["on"]["cached_tokens_mean"] >= (prefix["prefix_tokens"] // block) * block - block
    assert prefix["off"]["cached_tokens_mean"] == 0
    for mode in ("on", "off"):
        _check_percentiles(prefix[mode]["ttft_s"])
    assert prefix["ttft_saving_p50"] <= 1


def test_precision_compares_bf16_with_fp32_on_the_same_requests(result):
    precision = result["precision"]
    assert set(precision["dtypes"]) == {"float32", "bfloat16"}
    for metrics in precision["dtypes"].values():
        assert metrics["output_tokens"] > 0 and metrics["output_tok_s"] > 0
    agreement = precision["agreement"]
    assert agreement["requests"] == result["workload"][str(precision["concurrency"])]["num_requests"]
    assert 0 <= agreement["identical"] <= agreement["requests"]
    assert 0 <= agreement["mean_share_before_first_difference"] <= 1


def test_greedy_agreement_counts_the_shared_start_of_each_output():
    from tritonrag_bench.precision import greedy_agreement

    a = greedy_agreement({"x": [1, 2, 3, 4], "y": [5, 6], "z": [7]}, {"x": [1, 2, 9, 4], "y": [5, 6], "z": [8]})
    assert a["requests"] == 3 and a["identical"] == 1
    assert a["mean_share_before_first_difference"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
