"""aiperf (NVIDIA's load tool for OpenAI-compatible servers) from `.venv-aiperf`, run the same way against any server.

One `AiperfRun` is one `aiperf profile` of /v1/chat/completions, streamed, at a fixed
concurrency, over a JSONL file of prompts (aiperf's `single_turn` dataset: each line's
`text` and `output_length`, sent once each, in order). Greedy and `ignore_eos` go into
every request, so each request generates exactly its `output_length` tokens, and the
token counts come from the server's own `usage` (`--use-server-token-count`). aiperf's
tokenizer is our generator's, from a Hugging Face cache laid out with links to our files
(with HF_HUB_OFFLINE=1 it loads a tokenizer from a cache only; no hub is reachable).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonrag.paths import REPO_ROOT

AIPERF = REPO_ROOT / ".venv-aiperf" / "bin" / "aiperf"
TOKENIZER_ID = "tritonrag/smollm2-135m-instruct"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
)
GREEDY = {"temperature": 0.0, "ignore_eos": True}


def offline_cache(root: Path, model_dir: Path) -> Path:
    """A Hugging Face hub cache under `root` holding `model_dir`'s tokenizer as TOKENIZER_ID (links, no copies)."""
    snapshot = root / ("models--" + TOKENIZER_ID.replace("/", "--")) / "snapshots" / "local"
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text("local")
    for name in TOKENIZER_FILES:
        if (model_dir / name).exists() and not (snapshot / name).exists():
            (snapshot / name).symlink_to((model_dir / name).resolve())
    return root


def write_dataset(path: Path, prompts: list[tuple[str, int]]) -> Path:
    """(prompt text, max tokens) pairs as aiperf's single_turn JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"text": text, "output_length": max_tokens}) for text, max_tokens in prompts)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class AiperfRun:
    """One aiperf profile: every line of `dataset` once, `concurrency` streams, against `url` (the server's root)."""

    url: str
    model: str
    dataset: Path
    requests: int
    concurrency: int
    artifact_dir: Path
    hf_cache: Path
    api_key: str | None = None

    def command(self) -> list[str]:
        command = [
            str(AIPERF), "profile",
            "--model", self.model, "--endpoint-type", "chat", "--streaming", "--url", self.url,
            "--tokenizer", TOKENIZER_ID, "--use-server-token-count",
            "--input-file", str(self.dataset.resolve()), "--custom-dataset-type", "single_turn",
            "--dataset-sampling-strategy", "sequential",
            "--request-count", str(self.requests), "--concurrency", str(self.concurrency),
            "--extra-inputs", json.dumps(GREEDY),
            "--random-seed", "0", "--no-auto-plot", "--ui-type", "none",
            "--no-server-metrics",  # serve_bench reads each server's counters itself; the scraper can die on 2 cores
            "--output-artifact-dir", str(self.artifact_dir.resolve()),
        ]  # fmt: skip
        return command + (["--api-key", self.api_key] if self.api_key else [])

    def run(self, timeout: float = 3600) -> dict:
        """Run it and return its JSON export; raises with aiperf's output if it fails or any request failed."""
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(self.hf_cache.resolve()))
        done = subprocess.run(
            self.command(), env=env, capture_output=True, text=True, timeout=timeout, cwd=self.artifact_dir
        )
        (self.artifact_dir / "aiperf.log").write_text(done.stdout + done.stderr)
        export = self.artifact_dir / "profile_export_aiperf.json"
        if done.returncode != 0 or not export.exists():
            raise RuntimeError(f"aiperf failed ({done.returncode}): {' '.join(self.command())}\n{done.stdout[-3000:]}")
        result = json.loads(export.read_text())
        if result.get("error_summary"):
            raise RuntimeError(f"aiperf saw failed requests: {result['error_summary']}")
        return result


def row_from_export(export: dict, asked_tokens: int) -> dict:
    """The numbers the table shows (ms, tok/s), and the output tokens the server reported against those asked."""

    def stat(name: str, key: str) -> float | None:
        value = export.get(name, {}).get(key)
        return None if value is None else float(value)

    return {
        "requests": int(stat("completed_request_count", "avg") or stat("request_count", "avg") or 0),
        "output_tok_s": stat("output_token_throughput", "avg"),
        "request_s": stat("request_throughput", "avg"),
        "duration_s": stat("benchmark_duration", "avg"),
        "ttft_ms": {p: stat("time_to_first_token", p) for p in ("p50", "p90", "p99", "avg")},
        "itl_ms": {p: stat("inter_token_latency", p) for p in ("p50", "p90", "p99", "avg")},
        "latency_ms": {p: stat("request_latency", p) for p in ("p50", "p90", "p99", "avg")},
        "prompt_tokens": stat("total_usage_prompt_tokens", "avg"),
        "output_tokens": stat("total_usage_completion_tokens", "avg"),
        "asked_output_tokens": asked_tokens,
    }


def ttft_after_burst(records: Path, concurrency: int) -> dict:
    """TTFT (ms) p50 / p99 of the requests sent after the opening burst, from aiperf's per-request records.

    A concurrency-N run opens by sending N requests at once; the last of them waits for the whole
    burst's prefill, which is what a run's TTFT p99 mostly measures. Each later request is sent as
    one ends, as in steady serving. The burst is the first N by the time aiperf issued them.
    """
    rows = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda row: row["metadata"]["credit_issued_ns"])
    ttfts = [row["metrics"]["time_to_first_token"]["value"] for row in rows[concurrency:]]
    if not ttfts:
        return {"p50": None, "p99": None, "count": 0}
    p50, p99 = np.percentile(ttfts, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "count": len(ttfts)}
