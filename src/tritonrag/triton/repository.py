"""The model repository's settings as the build tools need them: each model's config.pbtxt, parsed once.

TensorRT profiles are derived from what the server will actually be asked for: the embedder's
dynamic batch (its max_batch_size) and the generator's engine settings for every served version.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tritonrag.compile.trt_build import DimRange
from tritonrag.defaults import EMBEDDER_MAX_TOKENS
from tritonrag.engine.config import EngineConfig
from tritonrag.engine.runners.base import num_kv_blocks
from tritonrag.engine.runners.llama import LlamaConfig
from tritonrag.engine.runners.step_graph import generator_dims
from tritonrag.paths import MODEL_REPOSITORY
from tritonrag.retrieval.export import embedder_dims
from tritonrag.triton.generator_config import engine_config


def load_model_config(path: Path) -> model_config_pb2.ModelConfig:
    """One config.pbtxt as Triton's ModelConfig message."""
    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def string_parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    """A ModelConfig's `parameters` as {key: string_value}."""
    return {key: value.string_value for key, value in config.parameters.items()}


def embedder_settings(model_repository: Path = MODEL_REPOSITORY) -> dict[str, DimRange]:
    """Embedder dimensions from model_repository/embedder/config.pbtxt and tritonrag.defaults."""
    config = load_model_config(model_repository / "embedder" / "config.pbtxt")
    return embedder_dims(config.max_batch_size, EMBEDDER_MAX_TOKENS)


def generator_settings(model_repository: Path = MODEL_REPOSITORY) -> dict[str, DimRange]:
    """Generator dimensions covering every served version of model_repository/generator/config.pbtxt.

    Versions differ in batch sizes and KV cache size (`v<N>:` parameters); one engine
    serves them all, so each dimension's range is the union over the versions.
    """
    model_config = load_model_config(model_repository / "generator" / "config.pbtxt")
    params = string_parameters(model_config)
    versions = list(model_config.version_policy.specific.versions) or [1]
    merged: dict[str, DimRange] = {}
    for version in versions:
        config = engine_config(params, version, model_repository)
        weights = Path(config.model_dir) if config.model_dir else None
        for name, dim in generator_dims(config, _kv_blocks(config, weights)).items():
            merged[name] = merged[name].union(dim) if name in merged else dim
    return merged


def _kv_blocks(config: EngineConfig, weights: Path | None) -> int:
    """The KV blocks a version allocates; without num_kv_blocks that takes its weights' config.json."""
    if config.num_kv_blocks:
        return config.num_kv_blocks
    if weights is None or not (weights / "config.json").is_file():
        raise ValueError(
            f"the generator's KV block count needs its weights' config.json ({weights}); "
            "prepare the weights first (make setup) or set num_kv_blocks"
        )
    return num_kv_blocks(config, LlamaConfig.from_dir(weights))


MODEL_SETTINGS = {"embedder": embedder_settings, "generator": generator_settings}
