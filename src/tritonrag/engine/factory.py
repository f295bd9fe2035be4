"""Assemble a ready GenerationService from an EngineConfig: tokenizer, runner, sampler, engine."""

from __future__ import annotations

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.model_runner import ModelRunner
from tritonrag.engine.sampler import Sampler
from tritonrag.engine.serving import GenerationService, Observer


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def build_engine(config: EngineConfig) -> LLMEngine:
    runner = ModelRunner(config)
    return LLMEngine(config, runner, Sampler(), runner.eos_token_ids)


def build_service(config: EngineConfig, observer: Observer | None = None) -> GenerationService:
    return GenerationService(build_engine(config), load_tokenizer(config.model_dir), observer)
