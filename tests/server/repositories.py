"""Small model repositories for server tests that need only the LLM path (a short server start)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tritonrag.defaults import GENERATOR_MODEL, LLM_MODEL
from tritonrag.paths import MODEL_REPOSITORY


def llm_repository(root: Path) -> Path:
    """`llm` and the real generator config serving version 1 only."""
    repo = root / "model_repository"
    shutil.copytree(MODEL_REPOSITORY / LLM_MODEL, repo / LLM_MODEL, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / GENERATOR_MODEL / "1").mkdir(parents=True)
    config = (MODEL_REPOSITORY / GENERATOR_MODEL / "config.pbtxt").read_text()
    config, found = re.subn(r"versions: \[[^\]]*\]", "versions: [ 1 ]", config)
    assert found == 1, "the generator's version_policy lists its versions"
    (repo / GENERATOR_MODEL / "config.pbtxt").write_text(config)
    return repo
