"""The generator step on TensorRT: the step graph's engine, run on a CUDA GPU over our paged KV cache.

Same graph and same host side as the ONNX Runtime runner (`onnx_step.StepGraphRunner`:
packing the chunks, scattering the step's K/V into the pool); here the step runs through a
`TrtSession`, with the pool a torch CUDA tensor the engine reads by address (no copy).

An engine accepts only the shapes of its optimization profile, which `make engines` derives
from the serving settings (`tritonrag.compile.trt_build.generator_dims`). A config whose limits go
past that profile would fail on some later, larger step, so the limits are checked up front:

    factory.choose_runtime -> tensorrt_unavailable(config): no CUDA device, no TensorRT module,
                              no engine for this GPU, or engine.json says it cannot serve the
                              config (other weights, dtype, profile)  -> fall back, reason logged
    TrtModelRunner(config)  -> the loaded engine's own inputs and profile: ValueError at load
    every step              -> TrtSession.check_feeds: a shape outside the profile is a
                              ValueError before anything is enqueued
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tritonrag.compile.onnx_export import read_meta, stale_reason
from tritonrag.compile.trt_runtime import TrtSession, engine_meta, find_engine
from tritonrag.engine.config import EngineConfig
from tritonrag.engine.runners.base import num_kv_blocks
from tritonrag.engine.runners.graph_runner import StepGraphRunner
from tritonrag.engine.runners.llama import LlamaConfig
from tritonrag.engine.runners.step_graph import OUTPUT_NAMES, StepInputs, dynamic_axes, generator_dims, step_io_problem

GENERATOR_ENGINE = "generator"  # the engine cache's folder name (build/build_engines.py --model generator)

# The config limit that sets each profile dimension, for the refusal's message.
LIMITS = {
    "T": "max_num_batched_tokens",
    "N": "max_num_seqs",
    "num_blocks": "the KV pool's blocks: num_kv_blocks or kv_cache_memory_bytes",
    "block_size": "block_size",
    "decode_seqs": "max_num_seqs",
    "decode_past": "max_model_len",
    "decode_new": "one token per decode",
    "prefill_seqs": "max_num_seqs and max_num_batched_tokens // 2",
    "prefill_past": "max_model_len",
    "prefill_new": "max_num_batched_tokens and max_model_len",
}

Shape = tuple[int, ...]


# ---- can this engine serve this config? ----------------------------------------------------------------
@dataclass(frozen=True)
class EngineFacts:
    """What deciding whether a step engine can serve a config needs, from a loaded session or,
    without a GPU, from the engine.json `tritonrag.compile.trt_build` wrote beside it."""

    path: Path
    inputs: dict[str, tuple[Shape, str]]  # name -> (shape with -1 for dynamic axes, dtype name)
    profile: dict[str, tuple[Shape, Shape]]  # name -> (min shape, max shape) of optimization profile 0
    graph: Path | None  # the ONNX graph it was built from (engine.json's onnx_path)
    graph_meta: dict[str, Any] | None  # that graph's meta.json, None if the graph is gone or re-exported since

    @classmethod
    def of_session(cls, session: TrtSession) -> EngineFacts:
        inputs = {spec.name: (spec.shape, spec.dtype) for spec in session.inputs}
        return cls(session.engine_path, inputs, dict(session.profile), *_built_from(session.engine_meta))

    @classmethod
    def of_file(cls, engine_path: Path) -> EngineFacts:
        meta = engine_meta(engine_path)
        inputs = {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in meta.get("inputs", [])}
        ranges = (meta.get("profiles") or [{}])[0]
        profile = {name: (tuple(r["min"]), tuple(r["max"])) for name, r in ranges.items()}
        return cls(Path(engine_path), inputs, profile, *_built_from(meta))

    def problem(self, config: EngineConfig, model: LlamaConfig, num_kv_blocks: int) -> str | None:
        """Why this engine cannot run every step `config` schedules on `model`, or None."""
        max_positions = (self.graph_meta or {}).get("max_positions")
        return step_io_problem(self.path, self.inputs, max_positions, config, model) or profile_shortfall(
            self.path, self.profile, config, num_kv_blocks
        )


def _built_from(meta: dict[str, Any]) -> tuple[Path | None, dict[str, Any] | None]:
    """(graph, its meta.json) an engine was built from; the meta is None unless the graph there
    is still the one built (same sha256): a re-exported graph says nothing about an old engine."""
    graph = Path(meta["onnx_path"]) if meta.get("onnx_path") else None
    graph_meta = read_meta(graph.parent) if graph else None
    built = meta.get("key_inputs", {}).get("onnx_sha256")
    same = graph_meta is not None and built is not None and graph_meta.get("sha256") == built
    return graph, graph_meta if same else None


def profile_shortfall(
    path: Path, profile: dict[str, tuple[Shape, Shape]], config: EngineConfig, num_kv_blocks: int
) -> str | None:
    """Which step dimensions `config` can schedule lie outside the engine's profile, or None.

    What a config needs is what the engine builder profiles for it (`generator_dims`), so an
    engine built from the same settings always fits; each dimension is named once, with the
    config limit behind it.
    """
    need = generator_dims(config, num_kv_blocks)
    short: dict[str, str] = {}
    for name, axes in dynamic_axes().items():
        low, high = profile[name]
        for axis, dim in axes.items():
            if not (low[axis] <= need[dim].min and need[dim].max <= high[axis]) and dim not in short:
                short[dim] = (
                    f"{dim} {need[dim].min}..{need[dim].max} ({LIMITS[dim]}) but the engine takes "
                    f"{low[axis]}..{high[axis]}"
                )
    if not short:
        return None
    return (
        f"{path} cannot run every step this config schedules: "
        + "; ".join(short.values())
        + ". Rebuild it for these settings (make engines reads them from model_repository/generator/config.pbtxt) "
        "or lower them"
    )


def engine_mismatch(config: EngineConfig, engine_path: Path) -> str | None:
    """Why the engine at engine_path cannot serve `config`, from its engine.json (no GPU needed), or None.

    It must trace back to these weights through the graph it was built from (an engine of
    other weights would answer, silently wrong), and fit the config (`EngineFacts.problem`).
    """
    facts = EngineFacts.of_file(engine_path)
    if facts.graph_meta is None:
        return (
            f"cannot tell which weights {engine_path} holds: the graph it was built from ({facts.graph}) "
            "is gone or was exported again since (rebuild: make engines)"
        )
    assert facts.graph is not None  # _built_from sets graph_meta only where there is a graph
    stale = stale_reason(facts.graph.parent, Path(config.model_dir), check_graph=False)
    if stale:
        return f"{engine_path} was built from {facts.graph}, which does not stand for {config.model_dir}: {stale}"
    blocks = num_kv_blocks(
        config, LlamaConfig.from_dir(config.model_dir)
    )  # what the runner will allocate, as the builder counts it
    return facts.problem(config, LlamaConfig.from_dir(config.model_dir), blocks)


def tensorrt_unavailable(config: EngineConfig) -> str | None:
    """Why the generator step cannot run on TensorRT with `config` here (None: it can).

    In the order a fix goes: a CUDA device, a TensorRT module (full TensorRT or TensorRT for
    RTX), an engine in the cache for this GPU, one that can serve the config.
    """
    if torch.device(config.device).type != "cuda":
        return "a TensorRT engine needs a CUDA GPU"
    try:
        engine = find_engine(GENERATOR_ENGINE)
    except (RuntimeError, OSError) as exc:  # BuildError: no TensorRT module; EngineNotFound; no GPU
        return str(exc)
    return engine_mismatch(config, engine)


# ---- the runner --------------------------------------------------------------------------------------
class TrtModelRunner(StepGraphRunner):
    """The step engine run by TensorRT on a CUDA GPU, through a TrtSession.

    The pool is fed by address; the step's small index tensors are copied to the GPU; the
    outputs are torch tensors TrtSession allocates and fills on torch's current stream, so
    the K/V scatter and the logits' copy to the host follow the engine in order.
    `session` replaces the engine found for this GPU (the CPU tests pass a stand-in).
    """

    runtime = "tensorrt"

    def __init__(self, config: EngineConfig, session: TrtSession | None = None) -> None:
        super().__init__(config)
        self.session = session or open_step_session(config)
        reason = EngineFacts.of_session(self.session).problem(config, self.model_config, self.num_kv_blocks)
        if reason:
            raise ValueError(reason)
        self._allocate_pool()
        self.log_ready()

    def _run(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        logits, new_kv = self.session.run(OUTPUT_NAMES, step.feeds() | {"kv_cache": self.kv_cache})
        return logits, new_kv


def open_step_session(config: EngineConfig) -> TrtSession:
    """A session over the newest generator step engine for this GPU, on config.device."""
    if torch.device(config.device).type != "cuda":
        raise RuntimeError(f"the tensorrt runtime runs on a CUDA device, not {config.device!r}")
    return TrtSession(find_engine(GENERATOR_ENGINE), device=config.device)
