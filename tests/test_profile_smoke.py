"""Smoke run of the step profiler (`python -m tritonrag_bench.profile`, tiny settings): its files hold every
unit's timings and per-operator tables, and a baseline revision unpacks to a tree the worker can import.

No timing assertions: the machine may be busy; only shapes, counts and names are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tritonrag.engine.runners import paged_attention
from tritonrag.paths import generator_weights_dir
from tritonrag_bench.profile import baseline_tree

WEIGHTS = generator_weights_dir() / "model.safetensors"
pytestmark = pytest.mark.skipif(
    not WEIGHTS.exists(), reason=f"generator weights missing ({WEIGHTS}): run `make setup` first"
)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("profile")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "tritonrag_bench.profile", "--dtype", "bfloat16", "--batches", "1,2"]
    cmd += ["--context", "24", "--prefill-len", "40", "--chunk", "32", "--reps", "2", "--steps", "2"]
    cmd += ["--profile-reps", "1", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # ~30 s when the machine is quiet
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "profile-ops.txt").stat().st_size > 0
    return json.loads((out / "profile.json").read_text()), (out / "profile.md").read_text()


def test_every_unit_is_timed_and_profiled(result):
    data, _ = result
    [worker] = data["workers"]
    assert (worker["variant"], worker["dtype"]) == ("current", "bfloat16")
    units = ["decode B=1", "decode B=2", "prefill"]
    assert list(worker["times"]) == units and list(worker["ops"]) == units
    for unit in units:
        samples = worker["times"][unit]
        assert len(samples["wall_s"]) == (4 if unit.startswith("decode") else 2)  # reps x steps; prefill: reps
        assert all(t > 0 for t in samples["wall_s"] + samples["cpu_s"])
        [ops] = worker["ops"][unit]
        assert "mkldnn::_linear_pointwise" in ops or "aten::linear" in ops
        if paged_attention.load_kernels() is not None:  # the C++ ops show by name
            calls = ops["tritonrag::paged_attention"][1]
            assert calls > 0 and calls % 30 == 0  # once per layer and step (the prefill takes two chunks)
            assert "aten::scaled_dot_product_attention" not in ops


def test_summary_has_throughput_and_operator_tables(result):
    _, summary = result
    assert "| decode B=1 tok/s |" in summary and "| prefill tok/s |" in summary
    assert "## bfloat16 prefill: top operators by self CPU time" in summary


def test_a_baseline_revision_unpacks_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONRAG_ARTIFACTS", str(tmp_path))  # trees go under artifacts/profile/trees
    tree, commit = baseline_tree("HEAD")
    assert len(commit) == 40 and tree.is_relative_to(tmp_path)
    assert (tree / "src" / "tritonrag" / "engine" / "runners" / "llama.py").is_file()
