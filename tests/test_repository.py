"""The model repository's configs parse, agree with the Python defaults and hard-code no host path."""

from dataclasses import fields

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tritonrag.defaults import (
    EMBEDDING_DIM,
    ENSEMBLE_MODEL,
    GENERATOR_MODEL,
    LLM_MODEL,
    REQUEST_TIMEOUT_S,
    RERANK_CANDIDATES,
)
from tritonrag.engine.config import EngineConfig
from tritonrag.paths import MODEL_REPOSITORY, resolve_artifact
from tritonrag.triton.generator_config import ADAPTER_KEYS, engine_config
from tritonrag.triton.versioning import split_parameters

ROUTER_MODEL = LLM_MODEL  # the public LLM routes between the generator's versions

MODELS = sorted(p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt"))


def load(name: str) -> model_config_pb2.ModelConfig:
    text = (MODEL_REPOSITORY / name / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_every_stage_present():
    assert set(MODELS) >= {
        "rag",
        "preprocess",
        "embedder",
        "retriever",
        "reranker",
        "prompt_builder",
        ROUTER_MODEL,
        "generator",
    }


@pytest.mark.parametrize("name", MODELS)
def test_config_parses_and_names_match_folder(name):
    config = load(name)
    assert config.name == name
    if config.platform != "ensemble":
        assert list((MODEL_REPOSITORY / name).glob("*/model.py")) or config.backend != "python"


@pytest.mark.parametrize("name", MODELS)
def test_no_absolute_host_paths(name):
    for key, value in load(name).parameters.items():
        assert not value.string_value.startswith("/"), f"{name}.{key} hard-codes {value.string_value}"


def test_embedding_dim_agrees():
    assert list(load("embedder").output[0].dims) == [EMBEDDING_DIM]
    assert list(load("retriever").input[0].dims) == [EMBEDDING_DIM]
    assert load("retriever").parameters["rerank_candidates"].string_value == str(RERANK_CANDIDATES)


def test_generator_parameters_are_engine_settings():
    """Shared and per-version (`v<N>:<key>`) parameters are all engine settings, valid for every version."""
    config = load(GENERATOR_MODEL)
    assert config.backend == "tritonrag_llm" and config.model_transaction_policy.decoupled
    params = {k: v.string_value for k, v in config.parameters.items()}
    known = {f.name for f in fields(EngineConfig)} | set(ADAPTER_KEYS)
    shared, overrides = split_parameters(params)
    assert set(shared) <= known, set(shared) - known
    for version, keys in overrides.items():
        assert set(keys) <= known, (version, set(keys) - known)
    versions = list(config.version_policy.specific.versions)
    assert len(versions) >= 2 and set(overrides) <= set(versions)
    for version in versions:
        assert (MODEL_REPOSITORY / GENERATOR_MODEL / str(version)).is_dir(), f"version {version} has no folder"
        engine = engine_config(params, version, MODEL_REPOSITORY)
        assert engine.block_size > 0 and engine.max_num_seqs > 0


def test_generator_deadline_is_the_default():
    """Every version's request deadline is config.pbtxt's `request_timeout_s`, which says what defaults.py says."""
    config = load(GENERATOR_MODEL)
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert float(params["request_timeout_s"]) == REQUEST_TIMEOUT_S == EngineConfig().request_timeout_s
    for version in config.version_policy.specific.versions:
        assert engine_config(params, version, MODEL_REPOSITORY).request_timeout_s == REQUEST_TIMEOUT_S


def test_router_serves_the_generator_versions():
    router = load(ROUTER_MODEL)
    assert router.model_transaction_policy.decoupled
    params = {k: v.string_value for k, v in router.parameters.items()}
    versions = set(load(GENERATOR_MODEL).version_policy.specific.versions)
    assert params["target_model"] == GENERATOR_MODEL
    assert {int(params["stable_version"]), int(params["canary_version"])} <= versions
    generator_outputs = {t.name for t in load(GENERATOR_MODEL).output}
    assert generator_outputs <= {t.name for t in router.output}


def test_ensemble_wiring():
    """Every step's inputs are ensemble inputs or earlier outputs; the public outputs come from the router's stream."""
    ensemble = load(ENSEMBLE_MODEL)
    available = {tensor.name for tensor in ensemble.input}
    produced_by = {}
    for step in ensemble.ensemble_scheduling.step:
        stage = load(step.model_name)
        stage_inputs = {t.name for t in stage.input}
        stage_outputs = {t.name for t in stage.output}
        for model_input, tensor in step.input_map.items():
            assert model_input in stage_inputs, (step.model_name, model_input)
            assert tensor in available, (step.model_name, tensor)
        for model_output, tensor in step.output_map.items():
            assert model_output in stage_outputs, (step.model_name, model_output)
            available.add(tensor)
            produced_by[tensor] = step.model_name
    for output in ensemble.output:
        assert produced_by[output.name] == ROUTER_MODEL


def test_artifact_paths_resolve_beside_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITONRAG_ARTIFACTS", raising=False)
    repo = tmp_path / "model_repository"
    assert resolve_artifact("${TRITONRAG_ARTIFACTS}/index", repo) == tmp_path / "artifacts" / "index"
    monkeypatch.setenv("TRITONRAG_ARTIFACTS", str(tmp_path / "elsewhere"))
    assert resolve_artifact("${TRITONRAG_ARTIFACTS}/index", repo) == tmp_path / "elsewhere" / "index"
    assert resolve_artifact("weights/x", repo) == repo / "weights" / "x"


@pytest.mark.parametrize("name", MODELS)
def test_version_folders_hold_a_file(name):
    """Triton needs a version folder per model; git drops empty folders, so each must hold a file."""
    versions = [p for p in (MODEL_REPOSITORY / name).iterdir() if p.is_dir() and p.name.isdigit()]
    assert versions, f"{name} has no version folder"
    for version in versions:
        assert any(version.iterdir()), f"{version} is empty and would vanish from a clone"


def test_unknown_engine_parameter_is_refused_naming_it():
    """A misspelt knob (say `max_num_seq`) must stop the model from loading, not be ignored."""
    params = {"model_dir": "w", "max_num_seq": "8", "v2:dtyp": "bfloat16"}
    with pytest.raises(ValueError, match="max_num_seq"):
        engine_config(params, 1, MODEL_REPOSITORY)
    with pytest.raises(ValueError, match="dtyp"):
        engine_config({"model_dir": "w", "v2:dtyp": "bfloat16"}, 2, MODEL_REPOSITORY)
    assert engine_config({"model_dir": "w", "warmup": "false"}, 1, MODEL_REPOSITORY).model_dir.endswith("w")
