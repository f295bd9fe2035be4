"""The model repository's configs parse, agree with the Python defaults and hard-code no host path."""

from dataclasses import fields
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tritonrag.defaults import EMBEDDING_DIM, ENSEMBLE_MODEL, GENERATOR_MODEL, RERANK_CANDIDATES
from tritonrag.engine.config import EngineConfig
from tritonrag.paths import MODEL_REPOSITORY, resolve_artifact

MODELS = sorted(p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt"))


def load(name: str) -> model_config_pb2.ModelConfig:
    text = (MODEL_REPOSITORY / name / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_every_stage_present():
    assert set(MODELS) >= {"rag", "preprocess", "embedder", "retriever", "reranker", "prompt_builder", "generator"}


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
    config = load(GENERATOR_MODEL)
    assert config.backend == "tritonrag_llm" and config.model_transaction_policy.decoupled
    known = {f.name for f in fields(EngineConfig)} | {"warmup"}
    assert set(config.parameters) <= known, set(config.parameters) - known
    engine = EngineConfig.from_parameters({k: v.string_value for k, v in config.parameters.items()})
    assert engine.block_size > 0 and engine.max_num_seqs > 0


def test_ensemble_wiring():
    """Every step's inputs are ensemble inputs or earlier outputs; both public outputs come from the generator."""
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
        assert produced_by[output.name] == GENERATOR_MODEL


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
