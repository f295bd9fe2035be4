"""Assemble a ready GenerationService from an EngineConfig: tokenizer, runner, sampler, engine.

The top of the engine package: it imports the core and every runner; nothing in the core imports it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tritonrag.compile.onnx_export import choose_runtime as choose_for_graph
from tritonrag.compile.runtime import RuntimeChoice
from tritonrag.engine.config import EngineConfig
from tritonrag.engine.detokenizer import Tokenizer
from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.runners.base import PagedRunner
from tritonrag.engine.runners.onnx_runner import OnnxModelRunner
from tritonrag.engine.runners.step_graph import graph_mismatch
from tritonrag.engine.runners.torch_runner import ModelRunner
from tritonrag.engine.runners.trt_runner import TrtModelRunner, tensorrt_unavailable
from tritonrag.engine.sampler import Sampler
from tritonrag.engine.serving import GenerationService, Observer

log = logging.getLogger(__name__)


def load_tokenizer(model_dir: str) -> Tokenizer:
    from transformers import AutoTokenizer

    tokenizer: Tokenizer = AutoTokenizer.from_pretrained(model_dir)  # type: ignore[assignment]  # HF's backends satisfy the protocol
    return tokenizer


# tritonrag.compile.onnx_export.choose_runtime logs its own fallbacks (at WARNING); the factory logs
# the whole choice once, tensorrt's reason included, so that part's logger drops them.
_UNLOGGED = logging.getLogger(f"{__name__}.graph")
_UNLOGGED.setLevel(logging.CRITICAL)


def choose_runtime(config: EngineConfig) -> RuntimeChoice:
    """The runtime the engine will run on: the configured one, or the stated fallback (logged once).

    tensorrt needs a CUDA device, a TensorRT module (full TensorRT or TensorRT for RTX) and a
    generator step engine for this GPU in the engine cache (make engines), built from a graph
    of these weights, in the config's dtype, whose profile covers every step the config can
    schedule (tritonrag.engine.runners.trt_runner.tensorrt_unavailable). Else it falls to onnxruntime.
    onnxruntime needs the step graph at `onnx_path`, exported from these weights (its
    meta.json; tritonrag.compile.onnx_export.choose_runtime) and suiting the config: its dtype and
    its RoPE table's length. Else torch, which always runs.
    """
    skipped: tuple[str, ...] = ()
    if config.runtime == "tensorrt":
        reason = tensorrt_unavailable(config)
        if reason is None:
            return _logged(RuntimeChoice("tensorrt", "tensorrt"))
        skipped = (reason,)
    below = _graph_choice(config, "onnxruntime" if skipped else config.runtime)
    return _logged(RuntimeChoice(below.name, config.runtime, skipped + below.reasons))


def _graph_choice(config: EngineConfig, requested: str) -> RuntimeChoice:
    """onnxruntime if the step graph can serve `config` (asked for), else torch: unlogged."""
    onnx_path = Path(config.onnx_path) if config.onnx_path else None
    choice = choose_for_graph(requested, config.device, onnx_path, Path(config.model_dir), logger=_UNLOGGED)
    if choice.name == "onnxruntime":
        reason = graph_mismatch(config)  # e.g. a float32 graph for a bfloat16 canary
        if reason:
            choice = RuntimeChoice("torch", choice.requested, (*choice.reasons, reason))
    return choice


def _logged(choice: RuntimeChoice) -> RuntimeChoice:
    """The choice, logged: a fallback at WARNING with its reasons."""
    (log.warning if choice.fell_back else log.info)("%s: %s", log.name, choice.describe())
    return choice


def build_runner(config: EngineConfig, choice: RuntimeChoice | None = None) -> PagedRunner:
    """The runner of the chosen runtime (chosen here when not given)."""
    choice = choice or choose_runtime(config)
    if choice.name == "tensorrt":
        return TrtModelRunner(config)
    if choice.name == "onnxruntime":
        return OnnxModelRunner(config)
    if choice.name == "torch":
        return ModelRunner(config)
    raise ValueError(f"no generator runner for runtime {choice.name!r}")


def build_engine(config: EngineConfig, choice: RuntimeChoice | None = None) -> LLMEngine:
    runner = build_runner(config, choice)
    return LLMEngine(config, runner, Sampler(), runner.eos_token_ids)


def build_service(
    config: EngineConfig, observer: Observer | None = None, choice: RuntimeChoice | None = None
) -> GenerationService:
    """The engine is built on the service's loop thread, which then runs all of its torch work."""
    tokenizer = load_tokenizer(config.model_dir)
    return GenerationService(lambda: build_engine(config, choice), tokenizer, observer)
