"""`make gpu-check` (build/gpu_check.py): a clear skip on a CPU host, a failure where a GPU is half there.

The checks themselves need a CUDA GPU and cannot run here. What can: the skip on this host (no nvidia-smi),
through make as a user runs it; and, with a stand-in `nvidia-smi` on PATH that reports a GPU (the one mock:
no NVIDIA driver exists here), the path where the driver sees a GPU and torch does not, which must fail
with that reason instead of skipping. The JUnit reader is checked on a real pytest run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tritonrag.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "build" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.skipif(
    gpu_check.shutil.which("nvidia-smi") is not None, reason="this host has nvidia-smi: make gpu-check really runs"
)


def test_make_gpu_check_skips_with_a_reason_on_a_cpu_host():
    result = subprocess.run(
        ["make", "--no-print-directory", "gpu-check"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpu-check skipped: no nvidia-smi on PATH" in result.stdout
    report = json.loads((REPO_ROOT / "artifacts" / "gpu-check" / "report.json").read_text())
    assert report["status"] == "skipped" and "no NVIDIA driver" in report["reason"]
    assert report["steps"] == [] and report["tests"] == []


def test_driver_without_cuda_in_torch_fails_instead_of_skipping(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 570.00, 81559 MiB, 9.0'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--python", sys.executable, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and "torch sees no CUDA device" in report["reason"]
    assert report["host"]["nvidia-smi"].startswith("NVIDIA H100") and report["host"]["cuda_available"] is False
    assert "make gpu-check: failed" in (tmp_path / "out" / "report.md").read_text()


def test_junit_reader_reports_each_outcome(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2\n"
        "@pytest.mark.skip(reason='no GPU here')\n"
        "def test_skipped(): pass\n"
    )
    junit = tmp_path / "out.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path), f"--junitxml={junit}"],
        cwd=tmp_path, capture_output=True, timeout=120,
    )  # fmt: skip
    cases = {c["test"].split("::")[-1]: c for c in gpu_check.read_junit(junit)}
    assert {n: c["outcome"] for n, c in cases.items()} == {
        "test_ok": "passed",
        "test_bad": "failed",
        "test_skipped": "skipped",
    }
    assert "no GPU here" in cases["test_skipped"]["message"]
