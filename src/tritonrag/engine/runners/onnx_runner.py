"""The generator step graph run by ONNX Runtime, over the shared host side (graph_runner.StepGraphRunner)."""

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tritonrag.compile.onnx_export import read_meta
from tritonrag.engine.config import EngineConfig
from tritonrag.engine.runners.graph_runner import StepGraphRunner
from tritonrag.engine.runners.step_graph import ONNX_TYPES, StepInputs, step_io_problem

if TYPE_CHECKING:  # for annotations only: onnxruntime is imported where a session is made
    import onnxruntime

log = logging.getLogger(__name__)


class OnnxModelRunner(StepGraphRunner):
    """The step graph run by ONNX Runtime.

    The pool is bound to the graph by pointer through an IOBinding, so no step copies it;
    outputs go to torch tensors allocated here.
    """

    runtime = "onnxruntime"

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.onnx_path = Path(config.onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(
                f"onnx_path {self.onnx_path} does not exist (export it: python -m tritonrag.engine.runners.step_export)"
            )
        self.session = _session(self.onnx_path, config)
        self._check_graph()
        self._allocate_pool()
        self._device_type = "cuda" if self.device.type == "cuda" else "cpu"
        self.log_ready()

    def _check_graph(self) -> None:
        """The graph must be this model's (pool shape) in this runner's dtype, with room for max_model_len."""
        inputs = {i.name: (i.shape, ONNX_TYPES.get(i.type, i.type)) for i in self.session.get_inputs()}
        meta = read_meta(self.onnx_path.parent) or {}
        reason = step_io_problem(self.onnx_path, inputs, meta.get("max_positions"), self.config, self.model_config)
        if reason:
            raise ValueError(reason)

    def _run(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.model_config
        T, N = step.input_ids.shape[0], step.logits_index.shape[0]
        feeds = {name: t.to(self.device).contiguous() for name, t in step.feeds().items()}
        feeds["kv_cache"] = self.kv_cache
        outputs = {
            "logits": torch.empty(N, cfg.vocab_size, dtype=torch.float32, device=self.device),
            "new_kv": torch.empty(
                cfg.num_layers, 2, T, cfg.num_kv_heads, cfg.head_dim, dtype=self.dtype, device=self.device
            ),
        }
        binding = self.session.io_binding()
        for name, tensor in feeds.items():
            binding.bind_input(
                name,
                self._device_type,
                self._device_index,
                _np_type(tensor.dtype),
                tuple(tensor.shape),
                tensor.data_ptr(),
            )
        for name, tensor in outputs.items():
            binding.bind_output(
                name,
                self._device_type,
                self._device_index,
                _np_type(tensor.dtype),
                tuple(tensor.shape),
                tensor.data_ptr(),
            )
        self.session.run_with_iobinding(binding)
        return outputs["logits"], outputs["new_kv"]

    @property
    def _device_index(self) -> int:
        return self.device.index or 0


def _np_type(dtype: torch.dtype) -> type[np.generic]:
    types: dict[torch.dtype, type[np.generic]] = {
        torch.float32: np.float32,
        torch.float16: np.float16,
        torch.int64: np.int64,
    }
    return types[dtype]


def _session(path: Path, config: EngineConfig) -> "onnxruntime.InferenceSession":
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if config.num_threads > 0:
        options.intra_op_num_threads = config.num_threads
    # ORT's pool threads spin after a run by default; here torch (the KV scatter, the sampler)
    # runs right after on the same cores, and spinning threads starved it (2-5x slower torch ops).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if config.device.startswith("cuda"):  # untested here: this machine's onnxruntime has no CUDA provider
        providers.insert(0, "CUDAExecutionProvider")
    started = time.monotonic()
    session = ort.InferenceSession(str(path), options, providers=providers)
    log.info(
        "onnxruntime %s: loaded %s in %.1f s (%s)",
        ort.__version__,
        path,
        time.monotonic() - started,
        ", ".join(session.get_providers()),
    )
    return session
