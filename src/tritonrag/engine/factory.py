"""Assemble a ready GenerationService from an EngineConfig: tokenizer, runner, sampler, engine."""

from __future__ import annotations

import logging
from pathlib import Path

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.model_runner import ModelRunner, PagedRunner
from tritonrag.engine.sampler import Sampler
from tritonrag.engine.serving import GenerationService, Observer
from tritonrag.runtime import RuntimeChoice

log = logging.getLogger(__name__)


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def choose_runtime(config: EngineConfig) -> RuntimeChoice:
    """The runtime the engine will run on: the configured one, or the stated fallback (logged).

    onnxruntime needs the step graph at `onnx_path`, exported from these weights (its
    meta.json; tritonrag.onnx_export.choose_runtime) and suiting the config: its dtype and
    its RoPE table's length. There is no TensorRT runner for the generator yet, so
    `tensorrt` falls back (to onnxruntime when the graph can serve).
    """
    from tritonrag.onnx_export import choose_runtime as choose_for_graph

    onnx_path = Path(config.onnx_path) if config.onnx_path else None
    choice = choose_for_graph(config.runtime, config.device, onnx_path, Path(config.model_dir), logger=log)
    if choice.name == "onnxruntime":
        from tritonrag.engine.onnx_step import graph_mismatch

        reason = graph_mismatch(config)   # e.g. a float32 graph for a bfloat16 canary
        if reason:
            choice = RuntimeChoice("torch", choice.requested, (*choice.reasons, reason))
            log.warning("%s: %s", log.name, choice.describe())
    if not choice.fell_back:
        log.info("%s: %s", log.name, choice.describe())
    return choice


def build_runner(config: EngineConfig, choice: RuntimeChoice | None = None) -> PagedRunner:
    choice = choice or choose_runtime(config)
    if choice.name == "onnxruntime":
        from tritonrag.engine.onnx_step import OnnxModelRunner

        return OnnxModelRunner(config)
    if choice.name == "torch":
        return ModelRunner(config)
    raise ValueError(f"no generator runner for runtime {choice.name!r}")


def build_engine(config: EngineConfig, choice: RuntimeChoice | None = None) -> LLMEngine:
    runner = build_runner(config, choice)
    return LLMEngine(config, runner, Sampler(), runner.eos_token_ids)


def build_service(config: EngineConfig, observer: Observer | None = None,
                  choice: RuntimeChoice | None = None) -> GenerationService:
    return GenerationService(build_engine(config, choice), load_tokenizer(config.model_dir), observer)
