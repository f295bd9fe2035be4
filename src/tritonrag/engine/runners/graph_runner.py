"""The host side shared by the compiled step runners (ONNX Runtime, TensorRT): pack a step, run it, scatter its K/V."""

import logging

import torch

from tritonrag.engine.runners.base import PagedRunner, order_chunks
from tritonrag.engine.runners.step_graph import StepInputs, build_step_inputs
from tritonrag.engine.sequence import SchedulerOutput

log = logging.getLogger(__name__)


class StepGraphRunner(PagedRunner):
    """ModelRunner's interface over the exported step, whatever runtime runs it (host side only).

    The pool is a torch tensor in ModelRunner's layout, on the runner's device. Each step
    packs the scheduled chunks into the graph's inputs (`build_step_inputs`), hands them and
    the pool to the runtime (`_run`, per subclass) and scatters the returned new K/V into
    the pool at the step's slots: the graph never writes the pool itself.
    """

    def _allocate_pool(self) -> None:
        self.kv_cache = self.allocate_kv_cache()
        cfg = self.model_config
        self._slot_view = self.kv_cache.view(cfg.num_layers, 2, -1, cfg.num_kv_heads, cfg.head_dim)

    def execute(self, out: SchedulerOutput) -> torch.Tensor:
        """Logits [number of sampling chunks, vocab] in float32, in chunk order; the step's K/V land in the pool.

        A step of prefill chunks that all stop short of their prompt's end samples nothing.
        The graph still computes one logits row then (packed row 0, dropped here): a zero-row
        output has no data pointer, which ONNX Runtime's IOBinding refuses, and a TensorRT
        profile starts at N = 1 (`generator_dims`). One row costs one hidden x vocab product.
        """
        if out.is_empty:
            return self.empty_logits()
        chunks, logits_rows = order_chunks(out)
        step = build_step_inputs(chunks, logits_rows or [0], self.block_size)
        logits, new_kv = self._run(step)
        # new_kv [L, 2, T, KVH, D] -> the pool's slots [L, 2, NB * BS, KVH, D] at this step's slot_mapping
        self._slot_view.index_copy_(2, step.slot_mapping.to(self.device), new_kv)
        logits = logits[: len(logits_rows)]
        return logits if logits.device.type == "cpu" else logits.cpu()

    def _run(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, vocab] float32, new_kv [L, 2, T, KVH, D] in the pool's dtype) on the runner's device."""
        raise NotImplementedError
