"""Triton's standard load tools, run as users run them: genai-perf and perf_analyzer from `.venv-perf`.

`make perf-tools` builds `.venv-perf`: genai-perf 0.0.16 from PyPI, and perf_analyzer 2.51
(tritonserver's own release) taken from the `tritonclient[all]==2.51.0` wheel, since the
perf_analyzer wheels of current releases need glibc 2.38. It runs here with Debian's
`libb64-0d` and `libcudart.so.12` from the `nvidia-cuda-runtime-cu12` wheel (no GPU needed);
`.venv-perf/bin/perf_analyzer` is a small script that sets that up. (tritonclient 2.41.1's
perf_analyzer also runs, but genai-perf 0.0.16 cannot read its profile export.)

Two quirks of perf_analyzer 2.51, worked around here: `--warmup-request-count` below the
concurrency never finishes (so warm-up is the concurrency or none), and `--profile-export-file`
must not exist yet.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tritonrag.paths import REPO_ROOT

PERF_VENV = REPO_ROOT / ".venv-perf"
GENAI_PERF = PERF_VENV / "bin" / "genai-perf"
PERF_ANALYZER = PERF_VENV / "bin" / "perf_analyzer"


def missing_tools() -> str | None:
    """Why the tools cannot run (build them with `make perf-tools`), or None when they can."""
    for tool in (GENAI_PERF, PERF_ANALYZER):
        if not tool.exists():
            return f"{tool} is missing: run `make perf-tools`"
    try:
        subprocess.run([str(PERF_ANALYZER), "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{PERF_ANALYZER} does not run here: {exc}"
    return None


def tool_env() -> dict[str, str]:
    """The environment the tools run in: .venv-perf first on PATH (genai-perf finds perf_analyzer there), offline."""
    env = dict(os.environ)
    env["PATH"] = f"{PERF_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


@dataclass(frozen=True)
class GenaiPerfRun:
    """One genai-perf profile: a load against one model at one concurrency."""

    url: str  # gRPC host:port
    model: str
    tokenizer: Path  # local weights: no model hub is reachable
    concurrency: int
    input_tokens: int
    output_tokens: int
    request_count: int
    artifact_dir: Path
    streaming: bool = True
    seed: int = 0
    extra_inputs: tuple[str, ...] = ()  # genai-perf's `--extra-inputs name:value`, added to every payload

    def command(self) -> list[str]:
        command = [
            str(GENAI_PERF),
            "profile",
            "-m",
            self.model,
            "--endpoint-type",
            "kserve",
            "--backend",
            "vllm",
            "-u",
            self.url,
            "--tokenizer",
            str(self.tokenizer),
            "--synthetic-input-tokens-mean",
            str(self.input_tokens),
            "--synthetic-input-tokens-stddev",
            "0",
            "--output-tokens-mean",
            str(self.output_tokens),
            "--output-tokens-stddev",
            "0",
            "--output-tokens-mean-deterministic",  # min_tokens = max_tokens: every request asks exactly this many
            "--concurrency",
            str(self.concurrency),
            "--request-count",
            str(self.request_count),
            "--warmup-request-count",
            str(self.concurrency),  # perf_analyzer 2.51 hangs on a warm-up smaller than the concurrency
            "--random-seed",
            str(self.seed),
            "--artifact-dir",
            str(self.artifact_dir),
        ]
        for extra in self.extra_inputs:
            command += ["--extra-inputs", extra]
        return command + (["--streaming"] if self.streaming else [])

    def run(self, echo: bool = True, timeout: float = 1800) -> dict:
        """Run it (its table on stdout when `echo`) and return its JSON export; raises with its output if it fails."""
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            self.command(), env=tool_env(), capture_output=not echo, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"genai-perf failed ({done.returncode}): {' '.join(self.command())}\n{done.stdout or ''}"
            )
        return json.loads(export_path(self.artifact_dir, "profile_export_genai_perf.json").read_text())


def export_path(artifact_dir: Path, name: str) -> Path:
    """genai-perf writes into a folder it names after the model, backend and load; find its file."""
    found = sorted(artifact_dir.rglob(name))
    if not found:
        raise FileNotFoundError(f"no {name} under {artifact_dir}")
    return found[-1]


def perf_analyzer(args: list[str], export: Path, timeout: float = 1800) -> tuple[str, dict]:
    """Run perf_analyzer with `args` (plus its profile export); return (its output, the export). Raises on failure."""
    if export.exists():
        export.unlink()  # perf_analyzer refuses to overwrite its export
    export.parent.mkdir(parents=True, exist_ok=True)
    command = [str(PERF_ANALYZER), *args, "--profile-export-file", str(export)]
    done = subprocess.run(command, env=tool_env(), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done.stdout, json.loads(export.read_text())


def summary_row(export: dict, concurrency: int) -> dict:
    """The numbers of one genai-perf export that the README's table shows."""

    def stat(name: str, key: str) -> float:
        return float(export[name][key])

    return {
        "concurrency": concurrency,
        "requests": int(stat("request_count", "avg")),
        "output_tok_s": stat("output_token_throughput", "avg"),
        "request_s": stat("request_throughput", "avg"),
        "ttft_ms": [stat("time_to_first_token", k) for k in ("p50", "p90", "p99")],
        "itl_ms": [stat("inter_token_latency", k) for k in ("p50", "p90", "p99")],
        "latency_ms": [stat("request_latency", k) for k in ("p50", "p90", "p99")],
        "input_tokens": stat("input_sequence_length", "avg"),
        "output_tokens": [stat("output_sequence_length", k) for k in ("min", "avg", "max")],
    }
