"""`make bench-serve`'s pieces that need no server: the model repository copy it serves, its dataset and its table.

The servers themselves (tritonserver + our OpenAI service, vLLM's OpenAI server) are exercised by
running the benchmark (`make bench-serve`); that needs the opt-in .venv-vllm and minutes of quiet CPU.
"""

from __future__ import annotations

import json

import pytest

from tritonrag_bench.aiperf import ttft_after_burst, write_dataset
from tritonrag_bench.openai_servers import _engine_params, llm_repository
from tritonrag_bench.serve_report import markdown_table


def test_repository_copy_serves_one_generator_version_in_the_asked_dtype(tmp_path):
    repo = llm_repository(tmp_path, "bfloat16")
    assert sorted(p.name for p in repo.iterdir()) == ["generator", "llm"]
    assert sorted(p.name for p in (repo / "generator").iterdir() if p.is_dir()) == ["1"]
    generator = _engine_params(repo)
    assert generator["dtype"] == "bfloat16"
    assert not [key for key in generator if key.startswith("v2:")]
    assert "version_policy" not in (repo / "generator" / "config.pbtxt").read_text()
    llm = (repo / "llm" / "config.pbtxt").read_text()
    assert 'key: "canary_version" value: { string_value: "" }' in llm
    assert 'key: "rollout_driver" value: { string_value: "false" }' in llm
    assert f'string_value: "{tmp_path / "no-canary.json"}"' in llm


def test_generator_settings_can_be_set_over_the_shipped_ones(tmp_path):
    repo = llm_repository(tmp_path, "float32", {"max_num_batched_tokens": "2048", "num_threads": "1"})
    generator = _engine_params(repo)
    assert generator["max_num_batched_tokens"] == "2048" and generator["dtype"] == "float32"
    assert generator["num_threads"] == "1", "an engine setting the shipped config leaves at its default is added"
    with pytest.raises(RuntimeError, match="no parameter 'max_num_batched_token'"):
        llm_repository(tmp_path, "float32", {"max_num_batched_token": "2048"})  # a typo is refused, not ignored


def test_dataset_is_one_single_turn_line_per_request(tmp_path):
    path = write_dataset(tmp_path / "p.jsonl", [("a prompt\nwith a newline", 16), ('"quoted"', 200)])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"text": "a prompt\nwith a newline", "output_length": 16},
        {"text": '"quoted"', "output_length": 200},
    ]


def test_table_states_the_machine_and_shows_failed_rows():
    stats = {"p50": 100.0, "p90": 150.0, "p99": 200.0, "avg": 120.0}
    ok = {"system": "vllm", "dtype": "float32", "concurrency": 8, "requests": 16, "output_tok_s": 80.04}
    ok |= {"ttft_ms": stats, "itl_ms": stats, "latency_ms": stats, "prompt_tokens": 4000.0}
    ok |= {"output_tokens": 2099.0, "asked_output_tokens": 2099, "foreign_cpu_fraction": 0.05, "preemptions": 3.0}
    ok |= {"ttft_after_burst_ms": {"p50": 50.0, "p99": 90.0, "count": 8}}
    failed = {"system": "tritonrag", "dtype": "bfloat16", "concurrency": 8, "error": "RuntimeError: boom"}
    machine = {
        "cpu": "AMD EPYC",
        "usable_cores": 2,
        "torch": "2.13.0",
        "loadavg_at_start": [1.0],
        "loadavg_at_end": [2.0],
    }
    table = markdown_table({"label": "smoke", "machine": machine, "load_tool": "aiperf", "rows": [ok, failed]})
    assert table.startswith("smoke: AMD EPYC, 2 cores")
    assert (
        "| vllm | float32 | 8 | 16 | 80.0 | 100 / 200 | 50 / 90 | 100 / 200 | 100 / 200 | 4000 / 2099 (2099) | 3 | 5% |"
        in table
    )
    assert "| tritonrag | bfloat16 | 8 | failed: RuntimeError: boom |" in table


def test_ttft_after_the_burst_leaves_out_the_first_requests_issued(tmp_path):
    """aiperf's records in completion order; the first `concurrency` issued are the burst, whatever order they ended in."""
    issued_and_ttft = [(3, 900.0), (1, 5000.0), (2, 4000.0), (4, 100.0), (5, 300.0)]
    lines = [
        json.dumps({"metadata": {"credit_issued_ns": t}, "metrics": {"time_to_first_token": {"value": v}}})
        for t, v in issued_and_ttft
    ]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    after = ttft_after_burst(tmp_path / "records.jsonl", concurrency=2)
    assert after["count"] == 3 and after["p50"] == 300.0 and 100.0 < after["p99"] < 900.0
    assert ttft_after_burst(tmp_path / "records.jsonl", concurrency=5) == {"p50": None, "p99": None, "count": 0}
