"""Model repository copies for the benchmarks: the generator as version 1 alone, with chosen engine settings.

The shipped generator may hold several versions (a canary with `v<N>:<key>` overrides): each would load
its own engine on the same cores, and unversioned requests would go to the highest. A copy keeps version
1, drops the overrides and the version policy, and sets the engine settings a benchmark asks for.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import fields
from pathlib import Path

from tritonrag.engine.config import EngineConfig
from tritonrag.paths import MODEL_REPOSITORY

ENGINE_SETTINGS = frozenset(f.name for f in fields(EngineConfig))
OTHER_VERSIONS = re.compile(r'(?m)^\s*(version_policy\b.*|parameters \{ key: "v\d+:.*)$')


def set_param(text: str, key: str, value: str) -> str:
    """`key` set to `value` in a config.pbtxt; an engine setting the shipped file leaves at its default
    (num_threads, say) is added."""
    text, count = re.subn(rf'(key: "{key}" value: {{ string_value: ")[^"]*(")', rf"\g<1>{value}\g<2>", text)
    if count == 0 and key in ENGINE_SETTINGS:
        return text.rstrip("\n") + f'\nparameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    if count != 1:
        raise RuntimeError(f"no parameter {key!r} to set in the model repository copy")
    return text


def copy_generator_version_1(repo: Path, settings: dict[str, object]) -> None:
    """repo/generator: the shipped generator, version 1 only, with `settings` over its engine settings."""
    generator = repo / "generator"
    shutil.copytree(MODEL_REPOSITORY / "generator", generator, ignore=shutil.ignore_patterns("__pycache__"))
    for version in generator.iterdir():
        if version.is_dir() and version.name.isdigit() and version.name != "1":
            shutil.rmtree(version)
    config = generator / "config.pbtxt"
    text = OTHER_VERSIONS.sub("", config.read_text())
    for key, value in settings.items():
        text = set_param(text, key, str(value))
    config.write_text(text)
