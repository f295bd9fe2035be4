"""aiperf (NVIDIA's load generator for OpenAI-compatible servers) profiles /v1/chat/completions, streaming.

aiperf runs from its own virtualenv (`make .venv-aiperf`: its pinned dependencies clash with ours).
Its tokenizer is our local SmolLM2 weights: with HF_HUB_OFFLINE=1 aiperf only loads a tokenizer from
a Hugging Face cache, so the test lays one out (a snapshot of links to our files), and nothing
comes from a hub.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tritonrag.paths import REPO_ROOT, generator_weights_dir

AIPERF = REPO_ROOT / ".venv-aiperf" / "bin" / "aiperf"
TOKENIZER_ID = "tritonrag/smollm2-135m-instruct"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
)


def offline_cache(root: Path) -> Path:
    """A Hugging Face hub cache holding our generator's tokenizer as `TOKENIZER_ID` (links, no copies)."""
    repo = root / ("models--" + TOKENIZER_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / "local"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("local")
    for name in TOKENIZER_FILES:
        if (generator_weights_dir() / name).exists():
            (snapshot / name).symlink_to(generator_weights_dir() / name)
    return root


def test_aiperf_streams_chat_completions_without_errors(stack, llm_id, tmp_path):
    if not AIPERF.exists():
        pytest.fail(f"{AIPERF} is missing: run `make .venv-aiperf` (make test builds it)")
    requests, output_tokens = 8, 16
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(offline_cache(tmp_path / "hf")))
    command = [
        str(AIPERF), "profile",
        "--model", llm_id, "--endpoint-type", "chat", "--streaming",
        "--url", stack.url, "--api-key", stack.api_key,
        "--tokenizer", TOKENIZER_ID,
        "--request-count", str(requests), "--concurrency", "2",
        "--prompt-input-tokens-mean", "32", "--prompt-input-tokens-stddev", "0",
        "--prompt-output-tokens-mean", str(output_tokens), "--prompt-output-tokens-stddev", "0",
        "--extra-inputs", "ignore_eos:true",
        "--random-seed", "1", "--no-auto-plot",
        # Its optional /metrics scraper is a service of its own: on a loaded 2-core host it missed its
        # heartbeats and aiperf exited 1 with every request served; the server's counters are tested elsewhere.
        "--no-server-metrics",
        "--output-artifact-dir", str(tmp_path / "aiperf"),
    ]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads((tmp_path / "aiperf" / "profile_export_aiperf.json").read_text())
    assert result["error_summary"] == [], result["error_summary"]
    assert result["request_count"]["avg"] == requests == result["completed_request_count"]["avg"]
    assert result["request_error_rate"]["avg"] == 0
    # the server's usage (the engine's count): exactly the tokens asked for, since EOS is ignored
    assert result["usage_completion_tokens"]["min"] == output_tokens == result["usage_completion_tokens"]["max"]
    assert result["time_to_first_token"]["avg"] > 0 and result["inter_token_latency"]["avg"] > 0
