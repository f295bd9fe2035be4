"""Engine settings: one dataclass, validated once, filled from config.pbtxt parameters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from tritonrag.compile.runtime import RUNTIMES
from tritonrag.defaults import DTYPES, PREFILL_ORDERS, REQUEST_TIMEOUT_S, STALL_TIMEOUT_S


@dataclass
class EngineConfig:
    """Knobs of the engine; names follow vLLM's engine arguments where the meaning is the same."""

    model_dir: str = ""  # safetensors + config.json + tokenizer files
    dtype: str = "float32"  # "float32" (exact parity with HF) or "bfloat16"
    device: str = "cpu"  # "cpu" or "cuda"
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int = 0  # 0 = derive from kv_cache_memory_bytes
    kv_cache_memory_bytes: int = 512 * 2**20
    max_num_seqs: int = 32  # sequences per step
    max_num_batched_tokens: int = 512  # tokens computed per step (prefill chunks + decodes)
    max_model_len: int = 2048  # prompt + output tokens of one sequence
    max_waiting: int = 256  # bounded waiting queue; more is rejected
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    # Which prompts get the step's budget once running decodes have their token: "fcfs" (arrival order)
    # or "shortest" (fewest prompt tokens left first, so a short question is not queued behind long
    # RAG prompts; a prompt older than prefill_starvation_s, or one preempted, goes ahead of all others).
    prefill_order: str = "shortest"
    prefill_starvation_s: float = 10.0
    prefill_starved_share: float = 0.5  # of a step's prefill budget, for starved prompts while others wait
    num_threads: int = 0  # intra-op threads (torch, and ONNX Runtime's); 0 = their defaults
    runtime: str = "torch"  # torch, onnxruntime or tensorrt (tritonrag.compile.runtime.pick_runtime)
    onnx_path: str = ""  # the exported step graph, for runtime onnxruntime
    # Seconds a request may take from submission (queue time included); a client's timeout may only shorten it.
    request_timeout_s: float = REQUEST_TIMEOUT_S
    # Seconds the loop may go without finishing an iteration while it has work before it counts as stalled.
    stall_timeout_s: float = STALL_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.runtime = self.runtime.strip().lower()
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "max_waiting"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.prefill_order = self.prefill_order.strip().lower()
        if self.prefill_order not in PREFILL_ORDERS:
            raise ValueError(f"prefill_order must be one of {', '.join(PREFILL_ORDERS)}, got {self.prefill_order!r}")
        if not 0 < self.prefill_starvation_s < float("inf"):
            raise ValueError(
                f"prefill_starvation_s must be a positive number of seconds, got {self.prefill_starvation_s}"
            )
        if not 0 < self.prefill_starved_share <= 1:
            raise ValueError(f"prefill_starved_share must be in (0, 1], got {self.prefill_starved_share}")
        if not 0 < self.request_timeout_s < float("inf"):  # NaN fails too: every request has a deadline
            raise ValueError(f"request_timeout_s must be a positive number of seconds, got {self.request_timeout_s}")
        if not 0 < self.stall_timeout_s < float("inf"):
            raise ValueError(f"stall_timeout_s must be a positive number of seconds, got {self.stall_timeout_s}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs, or running decodes would stall")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError("without chunked prefill, max_num_batched_tokens must be >= max_model_len")

    @classmethod
    def from_parameters(
        cls, params: Mapping[str, str], adapter_keys: Iterable[str] = (), **overrides: Any
    ) -> EngineConfig:
        """Build from string-valued parameters (config.pbtxt).

        A key that is neither a field nor one of `adapter_keys` (settings the Triton adapter
        reads itself, such as `warmup`) is refused: a misspelt knob must not be ignored silently.
        """
        names = {f.name: str(f.type) for f in fields(cls)}
        unknown = sorted(set(params) - set(names) - set(adapter_keys))
        if unknown:
            known = ", ".join(sorted({*names, *adapter_keys}))
            raise ValueError(f"unknown engine parameter(s) {', '.join(unknown)}; known: {known}")
        values: dict[str, Any] = {name: _coerce(params[name], kind) for name, kind in names.items() if name in params}
        values.update(overrides)
        return cls(**values)


def _coerce(raw: str, type_name: str) -> bool | int | float | str:
    if type_name == "bool":
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if type_name == "int":
        return int(raw)
    if type_name == "float":
        return float(raw)
    return raw
