"""The torch runner: our Llama (llama.py) run eagerly over the paged KV cache, decode attention in place."""

from __future__ import annotations

import logging

import torch

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.runners import paged_attention
from tritonrag.engine.runners.base import PagedRunner, order_chunks, pack_tokens
from tritonrag.engine.runners.llama import AttentionMetadata, load_llama
from tritonrag.engine.sequence import SchedulerOutput

log = logging.getLogger(__name__)


class ModelRunner(PagedRunner):
    """Runs one engine step with our torch Llama: packs the scheduled chunks, returns sampling logits."""

    runtime = "torch"

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.model = load_llama(config.model_dir, self.dtype, self.device, max_positions=config.max_model_len)
        self.kv_cache = self.allocate_kv_cache()
        self.kv_caches = [(layer[0], layer[1]) for layer in self.kv_cache]
        self.paged_decode = self._use_paged_decode()
        self.log_ready()

    def _use_paged_decode(self) -> bool:
        """Attention (decodes and prefill chunks) read in place from the pool, and the fused small ops,
        through the CPU kernels where they build for this CPU and model (logged either way)."""
        cfg = self.model_config
        if not (
            paged_attention.kernel_supports(cfg.head_dim, self.device, cfg.num_heads // cfg.num_kv_heads)
            and cfg.hidden_size % 16 == 0
            and cfg.intermediate_size % 16 == 0
        ):
            return False
        kernels = paged_attention.load_kernels()
        if kernels is not None:
            self.model.use_cpu_kernels(kernels)
            log.info("model runner: attention reads the paged KV cache in place (%s)", paged_attention.EXTENSION_NAME)
        return kernels is not None

    def execute(self, out: SchedulerOutput) -> torch.Tensor:
        """Logits [number of sampling chunks, vocab] in float32, in chunk order."""
        if out.is_empty:
            return self.empty_logits()
        chunks, logits_rows = order_chunks(out)
        input_ids, positions = pack_tokens(chunks)
        meta = AttentionMetadata.build(
            query_lens=[c.num_new_tokens for c in chunks],
            context_lens=[c.end for c in chunks],
            block_tables=[c.seq.block_table for c in chunks],
            block_size=self.block_size,
            logits_indices=logits_rows,
            device=self.device,
            paged=self.paged_decode,
        )
        logits: torch.Tensor = self.model(input_ids.to(self.device), positions.to(self.device), self.kv_caches, meta)
        return logits.float()
