"""The cpu and gpu install variants cannot clash: pip's resolver, in a dry run, installs no CPU twin with gpu.

faiss-cpu and faiss-gpu-cu12 both install the module `faiss`, onnxruntime and onnxruntime-gpu both install
`onnxruntime`: installed together, whichever came last silently wins. The base dependencies must pull
neither, and each variant exactly its own.

pip resolves the real project (its metadata built from this pyproject.toml) with `--dry-run --ignore-installed
--report`, reading package metadata from the index, downloading no large wheel. One part cannot be resolved
here: `tensorrt-cu12-libs` is an sdist whose metadata step downloads the real wheel from NVIDIA's own index,
which this machine cannot reach. So the gpu variant is resolved without its TensorRT entry, and that entry's
own metadata (which pip can build) is checked to name only TensorRT's packages. The resolver runs take a
minute or more each: slow (TRITONRAG_SLOW=1); the declarations themselves are checked always.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import tomllib

from tritonrag.paths import REPO_ROOT


def slow(test):
    """pip resolves ~110 packages against the index: a minute or more each."""
    skip = pytest.mark.skipif(
        os.environ.get("TRITONRAG_SLOW") != "1", reason="pip resolves ~110 packages: TRITONRAG_SLOW=1"
    )
    return pytest.mark.slow(skip(test))


TWINS = {"faiss": ("faiss-cpu", "faiss-gpu-cu12"), "onnxruntime": ("onnxruntime", "onnxruntime-gpu")}
CPU_TWINS = {cpu for cpu, _ in TWINS.values()}
GPU_TWINS = {gpu for _, gpu in TWINS.values()}
EXTRAS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def name_of(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def resolve(*requirements: str, no_deps: bool = False) -> dict[str, dict]:
    """pip's dry-run report: {normalised name: metadata} of everything it would install."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-"]
    command += ["--no-deps"] if no_deps else []
    result = subprocess.run([*command, *requirements], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    return {name_of(item["metadata"]["name"]): item["metadata"] for item in report["install"]}


def project(extras: str = "") -> str:
    return f"tritonrag{extras} @ {REPO_ROOT.as_uri()}"


def test_variants_declare_one_twin_of_each_pair():
    assert {name_of(r) for r in EXTRAS["cpu"]} == CPU_TWINS
    assert {name_of(r) for r in EXTRAS["gpu"]} >= GPU_TWINS
    assert not {name_of(r) for r in EXTRAS["gpu"]} & CPU_TWINS


@slow
def test_gpu_variant_resolves_without_a_cpu_twin():
    without_tensorrt = [r for r in EXTRAS["gpu"] if not name_of(r).startswith("tensorrt")]
    installed = resolve(project(), *without_tensorrt)
    assert GPU_TWINS <= installed.keys()
    assert not CPU_TWINS & installed.keys(), f"the gpu variant pulls {sorted(CPU_TWINS & installed.keys())}"


@slow
def test_gpu_variants_tensorrt_pulls_only_tensorrt():
    (pinned,) = [r for r in EXTRAS["gpu"] if name_of(r).startswith("tensorrt")]
    assert "==" in pinned, "TensorRT is pinned"
    (metadata,) = resolve(pinned, no_deps=True).values()
    needs = {name_of(r) for r in metadata.get("requires_dist", []) if "extra ==" not in r}
    assert needs and all(n.startswith("tensorrt-cu12") for n in needs), needs


@slow
def test_cpu_variant_resolves_without_a_gpu_twin():
    installed = resolve(project("[cpu]"))
    assert CPU_TWINS <= installed.keys()
    assert not GPU_TWINS & installed.keys()
