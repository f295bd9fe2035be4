"""Importing tritonrag sets libgomp's spin-wait for the process (tritonrag.defaults.GOMP_SPINCOUNT says
why) unless the environment chose one; it has to happen before torch loads libgomp."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tritonrag.defaults import GOMP_SPINCOUNT

PROBE = "import tritonrag, os, torch; print(os.environ['GOMP_SPINCOUNT'])"


def _spincount(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if env_value is not None:
        env["GOMP_SPINCOUNT"] = env_value
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_default_is_set_and_a_users_choice_is_kept():
    assert _spincount(None) == GOMP_SPINCOUNT
    assert _spincount("0") == "0"


def test_triton_stubs_load_tritonrag_before_torch():
    """The Python backend's utils module imports no torch, so a model.py's first tritonrag import comes first."""
    from tritonrag.paths import artifacts_dir

    utils = artifacts_dir() / "backends" / "python" / "triton_python_backend_utils.py"
    if not utils.is_file():
        pytest.skip(f"no Python backend at {utils} (make setup)")
    assert "import torch" not in utils.read_text()
