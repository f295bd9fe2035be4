"""The repository stays lint-clean, formatted and (in the engine) strictly typed, as CI enforces.

Runs the tools the way a developer does, from the repository root with pyproject.toml's
settings: `ruff check .`, `ruff format --check .` and `mypy` (its files and strictness
come from [tool.mypy]). A failure shows the tool's own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "ruff check": ["ruff", "check", "."],
    "ruff format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_tool_passes(name: str) -> None:
    # `python -m` runs the tools installed beside this interpreter (the test extra pins them)
    result = subprocess.run(
        [sys.executable, "-m", *COMMANDS[name]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{name} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
