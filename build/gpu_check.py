"""`make gpu-check`: every GPU-only check in one run on a CUDA host, with a report; a clear skip elsewhere.

    python build/gpu_check.py [--python .venv/bin/python] [--budget 600] [--out artifacts/gpu-check]

This script needs only the standard library, so any python3 can decide whether there is anything to check.
The checks run under the project's virtualenv (--python), each in a subprocess given what is left of the
budget (10 minutes in all):

1. host     nvidia-smi (GPU, driver, memory) and what the virtualenv sees: torch's CUDA build and compute
            capability, faiss GPU support, ONNX Runtime's providers, TensorRT's version (the gpu variant)
2. engines  build/build_engines.py --backend tensorrt: engines for this GPU from `make setup`'s graphs
3. tests    pytest -m gpu over tests/: TensorRT runtime and step engine, FAISS on the GPU, ONNX Runtime's
            CUDA provider, the engine on CUDA against HF greedy, Triton serving the TensorRT engines

A GPU test that skips on a GPU host means a missing piece (no TensorRT, no graph): the run is `incomplete`
and exits 1, as a failure does. The report is written as report.json and report.md under --out. On a host
without an NVIDIA GPU the report says so and the exit status is 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 600
ENGINE_BUILD_S = 300  # at most this much of the budget for the engine builds; the tests need the rest

HOST_PROBE = r"""
import json, torch
info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if info["cuda_available"]:
    major, minor = torch.cuda.get_device_capability()
    info.update(device=torch.cuda.get_device_name(), compute_capability=f"sm{major}{minor}")
try:
    import faiss
    info["faiss"] = f"{faiss.__version__}, GPUs seen: {faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}"
except Exception as exc:
    info["faiss"] = f"not importable: {exc}"
try:
    import onnxruntime
    info["onnxruntime"] = f"{onnxruntime.__version__}, providers: {', '.join(onnxruntime.get_available_providers())}"
except Exception as exc:
    info["onnxruntime"] = f"not importable: {exc}"
try:
    import tensorrt
    info["tensorrt"] = tensorrt.__version__
except Exception as exc:
    info["tensorrt"] = f"not importable: {exc}"
print(json.dumps(info))
"""


@dataclass
class Step:
    """One check: what ran, how it ended, and its output's tail."""

    name: str
    command: list[str]
    status: str = "not run"  # passed, failed, timed out, not run
    seconds: float = 0.0
    output: str = ""


@dataclass
class Report:
    status: str  # skipped, passed, failed, incomplete
    reason: str = ""
    host: dict = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    tests: list[dict] = field(default_factory=list)  # {test, outcome, seconds, message}


def nvidia_smi() -> tuple[str | None, str]:
    """(GPU description, why not) from nvidia-smi: the host's driver, before any Python package is asked."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None, "no nvidia-smi on PATH: this host has no NVIDIA driver, so there is no GPU to check"
    query = ["--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]
    result = subprocess.run([binary, *query], capture_output=True, text=True, timeout=60)
    gpus = result.stdout.strip()
    if result.returncode != 0 or not gpus:
        return None, f"nvidia-smi found no GPU ({(result.stderr or result.stdout).strip()[:300]})"
    return gpus, ""


def run_step(step: Step, timeout: float) -> Step:
    started = time.monotonic()
    try:
        result = subprocess.run(
            step.command, cwd=REPO, capture_output=True, text=True, timeout=max(timeout, 1), env=_environment()
        )
        step.status = "passed" if result.returncode == 0 else "failed"
        step.output = (result.stdout + result.stderr)[-6000:]
    except subprocess.TimeoutExpired as exc:
        step.status = "timed out"
        step.output = ((exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace"))[
            -6000:
        ]
    step.seconds = round(time.monotonic() - started, 1)
    return step


def _environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def read_junit(path: Path) -> list[dict]:
    """Each test case of a pytest JUnit XML file: its id, outcome and message."""
    if not path.exists():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (element.get("message") or element.text or "").strip()[:500]
                break
        test = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        cases.append({"test": test, "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message})
    return cases


def check(python: str, budget: float, out: Path) -> Report:
    deadline = time.monotonic() + budget
    gpus, why_not = nvidia_smi()
    if gpus is None:
        return Report("skipped", why_not)
    report = Report("passed", host={"nvidia-smi": gpus})
    if not Path(python).exists():
        return Report("failed", f"{python} does not exist: run `make setup` (the gpu variant) first", report.host)

    probe = run_step(Step("host", [python, "-c", HOST_PROBE]), deadline - time.monotonic())
    report.steps.append(probe)
    if probe.status == "passed":
        report.host.update(json.loads(probe.output.strip().splitlines()[-1]))
    if not report.host.get("cuda_available"):
        report.status, report.reason = "failed", "the GPU is there (nvidia-smi) but torch sees no CUDA device"
        return report

    engines = Step("engines", [python, "build/build_engines.py", "--backend", "tensorrt"])
    report.steps.append(run_step(engines, min(ENGINE_BUILD_S, deadline - time.monotonic())))

    junit = out / "pytest.xml"
    pytest = [python, "-m", "pytest", "-m", "gpu", "tests", "-ra", "-p", "no:cacheprovider"]
    pytest += ["--continue-on-collection-errors", f"--junitxml={junit}", f"--timeout={ENGINE_BUILD_S}"]
    tests = run_step(Step("tests", pytest), deadline - time.monotonic())
    report.steps.append(tests)
    report.tests = read_junit(junit)

    outcomes = {t["outcome"] for t in report.tests}
    if any(s.status != "passed" for s in report.steps) or outcomes & {"failed", "error"}:
        report.status = "failed"
    elif not report.tests or "skipped" in outcomes:
        report.status = "incomplete"
        report.reason = "GPU tests skipped on a GPU host (see their reasons)" if report.tests else "no GPU test ran"
    return report


def markdown(report: Report) -> str:
    lines = [f"# make gpu-check: {report.status}", ""]
    if report.reason:
        lines += [report.reason, ""]
    if report.host:
        lines += ["## Host", "", *(f"- {k}: {v}" for k, v in report.host.items()), ""]
    if report.steps:
        lines += ["## Steps", "", "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds} |" for s in report.steps] + [""]
    if report.tests:
        lines += ["## GPU tests", "", "| test | outcome | seconds | message |", "|---|---|---|---|"]
        for t in report.tests:
            message = t["message"].replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| `{t['test']}` | {t['outcome']} | {t['seconds']:.1f} | {message} |")
        lines.append("")
    for step in report.steps:
        if step.status != "passed":
            lines += [f"## {step.name}: output (tail)", "", "```", step.output[-3000:], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"), help="the project's virtualenv")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all checks (default 600)")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "gpu-check")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = check(args.python, args.budget, args.out)
    (args.out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    if report.status == "skipped":
        print(f"gpu-check skipped: {report.reason}. Nothing to check; exit 0. ({args.out / 'report.md'})")
        return 0
    counts = {o: sum(t["outcome"] == o for t in report.tests) for o in ("passed", "failed", "error", "skipped")}
    print(markdown(report).split("## GPU tests")[0])
    print(f"gpu-check {report.status}: " + ", ".join(f"{n} {o}" for o, n in counts.items()) + f" ({args.out})")
    return 0 if report.status == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
