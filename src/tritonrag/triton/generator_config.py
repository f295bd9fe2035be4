"""A generator version's EngineConfig from its model's config.pbtxt parameters: the one place they are read.

The backend (backends/tritonrag_llm), the TensorRT profile builder (triton.repository) and the
tests all build a version's engine settings here, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tritonrag.engine.config import EngineConfig
from tritonrag.paths import resolve_artifact
from tritonrag.triton.versioning import version_parameters

ADAPTER_KEYS = ("warmup",)  # parameters the backend reads itself; every other key is an EngineConfig field
PATH_KEYS = ("model_dir", "onnx_path")  # resolved against the model repository (${TRITONRAG_ARTIFACTS}/...)


def engine_config(
    params: Mapping[str, str], version: int | str, model_repository: Path | str, device: str | None = None
) -> EngineConfig:
    """Version `version`'s settings: shared keys overridden by its `v<N>:` keys, paths resolved.

    An unknown key is a ValueError naming it (EngineConfig.from_parameters); `device`, when
    given, replaces the configured one (the backend passes the device it picked).
    """
    own = version_parameters(dict(params), version)
    overrides: dict[str, str] = {
        key: str(resolve_artifact(own[key], model_repository)) for key in PATH_KEYS if own.get(key)
    }
    if device is not None:
        overrides["device"] = device
    return EngineConfig.from_parameters(own, adapter_keys=ADAPTER_KEYS, **overrides)


def warmup_enabled(params: Mapping[str, str], version: int | str) -> bool:
    return version_parameters(dict(params), version).get("warmup", "true").strip().lower() == "true"
