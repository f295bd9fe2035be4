"""`python -m tritonrag_bench.profile`: where an engine step's time goes, per operator, and a baseline A/B.

    python -m tritonrag_bench.profile --dtype bfloat16,float32 --baseline HEAD~3

Each (variant, dtype) is one engine in its own worker process (tritonrag_bench.profile_worker);
variant `current` is this working tree, `baseline` the `src/` of a git revision. The workers run
in lockstep, one unit at a time in rotating order, so the load of other processes on a shared
machine falls on every variant alike. Per unit (decode steps at each batch size, a chunked
prefill): median wall time and CPU time over the repetitions, tokens/s from the wall median,
then the same units under torch.profiler: each operator's self CPU time per unit, the median
over the profiled units (one preempted op does not move a median).

Writes <out>/profile.json, profile.md (tables) and profile-ops.txt (every op table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from tritonrag.paths import REPO_ROOT, artifacts_dir, generator_weights_dir
from tritonrag_bench.machine import CpuMeter, machine_info
from tritonrag_bench.profile_report import write_reports
from tritonrag_bench.profile_worker import REPLY

BENCH_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Worker:
    """A worker process and what it measured: unit key -> samples, unit key -> per-unit op tables."""

    variant: str
    dtype: str
    proc: subprocess.Popen
    torch_threads: int = 0
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    ops: dict[str, list[dict[str, list[float]]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.variant} {self.dtype}"

    def ask(self, command: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()

    def read(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                reply: dict = json.loads(line[len(REPLY) :])
                return reply
        raise RuntimeError(f"profile worker {self.name} exited ({self.proc.wait()}); see its log")


def baseline_tree(revision: str) -> tuple[Path, str]:
    """The revision's src/ unpacked once under artifacts/profile/trees/<commit>, and the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", revision + "^{commit}"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = artifacts_dir() / "profile" / "trees" / commit[:12]
    if not (tree / "src").is_dir():
        archive = subprocess.run(["git", "archive", commit, "src"], cwd=REPO_ROOT, check=True, capture_output=True)
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
    return tree, commit


def start_worker(variant: str, dtype: str, tree: Path | None, args: argparse.Namespace, log_dir: Path) -> Worker:
    env = dict(os.environ)
    src = (tree or REPO_ROOT) / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(BENCH_DIR)])
    if tree is not None:  # its own build of the C++ ops, not the working tree's
        env["TRITONRAG_ARTIFACTS"] = str(tree / "artifacts")
    command = [sys.executable, "-m", "tritonrag_bench.profile_worker", "--model-dir", args.model_dir, "--dtype", dtype]
    command += ["--context", str(args.context), "--max-batch", str(max(args.batches))]
    command += ["--prefill-len", str(args.prefill_len), "--chunk", str(args.chunk), "--threads", str(args.threads)]
    log = open(log_dir / f"worker-{variant}-{dtype}.log", "w")  # noqa: SIM115  # the worker keeps it
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO_ROOT
    )
    worker = Worker(variant, dtype, proc)
    worker.torch_threads = worker.read()["torch_threads"]  # "ready": loaded, compiled and warmed
    print(f"  worker ready: {worker.name} ({src})", flush=True)
    return worker


def units(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [("decode", b) for b in args.batches] + ([("prefill", 0)] if args.prefill_len else [])


def unit_key(name: str, batch: int) -> str:
    return f"decode B={batch}" if name == "decode" else "prefill"


def measure(workers: list[Worker], args: argparse.Namespace) -> None:
    """Every unit on every worker, repetition by repetition in rotating order, round after round (a
    neighbour's burst of load then lands in one round's samples, not in all of one unit's); the
    profiled units in the last round."""
    for round_ in range(args.rounds):
        for name, batch in units(args):
            key, count = unit_key(name, batch), args.steps if name == "decode" else 1
            for rep in range(args.reps):
                for w in _rotated(workers, rep):
                    got = w.ask({"unit": name, "batch": batch, "count": count})
                    samples = w.times.setdefault(key, {"wall_s": [], "cpu_s": []})
                    samples["wall_s"] += got["wall_s"]
                    samples["cpu_s"] += got["cpu_s"]
            for rep in range(args.profile_reps if round_ == args.rounds - 1 else 0):
                for w in _rotated(workers, rep):
                    profiled = w.ask({"unit": name, "batch": batch, "count": 1, "profile": True})
                    w.ops.setdefault(key, []).extend(profiled["ops"])
            medians = ", ".join(f"{w.name} {_median_ms(w.times[key]['wall_s']):.1f} ms" for w in workers)
            print(f"  round {round_ + 1}/{args.rounds} {key}: {medians}", flush=True)


def _rotated(workers: list[Worker], rep: int) -> list[Worker]:
    k = rep % len(workers)
    return workers[k:] + workers[:k]


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tritonrag_bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--baseline", default="", help="a git revision to compare against (its src/), e.g. HEAD~2")
    p.add_argument("--batches", default="1,8,32", help="decode batch sizes")
    p.add_argument("--context", type=int, default=300, help="prompt tokens of each decoding sequence")
    p.add_argument("--prefill-len", type=int, default=1024, help="prompt tokens of the prefill unit (0: none)")
    p.add_argument("--chunk", type=int, default=512, help="max_num_batched_tokens: the prefill chunk")
    p.add_argument("--rounds", type=int, default=1, help="passes over all units (each decode batch set up again)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per unit, worker and round")
    p.add_argument("--steps", type=int, default=4, help="decode steps per repetition")
    p.add_argument("--profile-reps", type=int, default=3, help="profiled units per unit and worker")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker; 0 = torch's default")
    p.add_argument("--top", type=int, default=15, help="operators per table in profile.md")
    p.add_argument("--model-dir", default=str(generator_weights_dir()))
    p.add_argument(
        "--out", default=str(artifacts_dir() / "bench"), help="folder for profile.{json,md} and the op tables"
    )
    args = p.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants: list[tuple[str, Path | None, str]] = []
    if args.baseline:
        tree, commit = baseline_tree(args.baseline)
        variants.append(("baseline", tree, commit))
    variants.append(("current", None, "working tree"))
    started, machine = time.time(), machine_info(",".join(args.dtypes))
    workers: list[Worker] = []
    try:
        for variant, tree, _ in variants:
            for dtype in args.dtypes:
                workers.append(start_worker(variant, dtype, tree, args, out))
        with CpuMeter(children=False) as meter:  # the workers' CPU counts as other processes': see below
            measure(workers, args)
    finally:
        for w in workers:
            w.close()
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "variants": {name: source for name, _, source in variants},
        "machine": machine,
        "loadavg_at_end": os.getloadavg(),
        # busy CPU of the whole machine during the measurement, as a share of all cores: the workers
        # use at most their threads' share, whatever is above that was other processes'
        "machine_busy_fraction": meter.result["foreign_cpu_fraction"],
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": time.time() - started,
        "workers": [
            {"variant": w.variant, "dtype": w.dtype, "torch_threads": w.torch_threads, "times": w.times, "ops": w.ops}
            for w in workers
        ],
    }
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    write_reports(result, out, args.top)
    print(f"wrote {out / 'profile.md'}, {out / 'profile-ops.txt'}, {out / 'profile.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
