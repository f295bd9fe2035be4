"""Model runner: owns the weights and the paged KV cache, turns a SchedulerOutput into logits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.model import AttentionMetadata, LlamaConfig, load_llama
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelRunner:
    """Runs one engine step: packs the scheduled chunks, runs the model, returns sampling logits.

    The KV cache is one tensor [layers, 2 (K, V), num_blocks, block_size, kv_heads, head_dim];
    the scheduler hands out block ids in [0, num_kv_blocks).
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.device = torch.device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.model_config = LlamaConfig.from_dir(config.model_dir)
        self.model = load_llama(config.model_dir, self.dtype, self.device, max_positions=config.max_model_len)
        self.block_size = config.block_size
        self.num_kv_blocks = config.num_kv_blocks or config.kv_cache_memory_bytes // self.bytes_per_block
        if self.num_kv_blocks < 1:
            raise ValueError(
                f"kv_cache_memory_bytes={config.kv_cache_memory_bytes} is less than one block ({self.bytes_per_block} bytes)"
            )
        cfg = self.model_config
        self.kv_cache = torch.zeros(
            cfg.num_layers, 2, self.num_kv_blocks, self.block_size, cfg.num_kv_heads, cfg.head_dim,
            dtype=self.dtype, device=self.device,
        )
        self.kv_caches = [(layer[0], layer[1]) for layer in self.kv_cache]
        self.eos_token_ids = _eos_token_ids(Path(config.model_dir))
        log.info("model runner: %s %s, %d KV blocks of %d tokens (%.1f MiB)", config.dtype, self.device,
                 self.num_kv_blocks, self.block_size, self.num_kv_blocks * self.bytes_per_block / 2**20)

    @property
    def vocab_size(self) -> int:
        return self.model_config.vocab_size

    @property
    def bytes_per_block(self) -> int:
        """KV cache bytes of one block: K and V, every layer, block_size tokens."""
        cfg = self.model_config
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * cfg.num_layers * self.block_size * cfg.num_kv_heads * cfg.head_dim * itemsize

    def execute(self, out: SchedulerOutput) -> torch.Tensor:
        """Logits [number of sampling chunks, vocab] in float32, in chunk order."""
        if out.is_empty:
            return torch.empty(0, self.vocab_size)
        # Single-query chunks go first so attention can batch them; logits keep chunk order.
        chunks = [c for c in out.chunks if c.num_new_tokens == 1] + [c for c in out.chunks if c.num_new_tokens != 1]
        last_row, row = {}, 0
        for chunk in chunks:
            row += chunk.num_new_tokens
            last_row[id(chunk)] = row - 1
        logits_rows = [last_row[id(c)] for c in out.chunks if c.samples]
        input_ids, positions = _pack(chunks)
        meta = AttentionMetadata.build(
            query_lens=[c.num_new_tokens for c in chunks],
            context_lens=[c.end for c in chunks],
            block_tables=[c.seq.block_table for c in chunks],
            block_size=self.block_size,
            logits_indices=logits_rows,
            device=self.device,
        )
        logits = self.model(input_ids.to(self.device), positions.to(self.device), self.kv_caches, meta)
        return logits.float()


def _pack(chunks: list[ScheduledChunk]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and positions [T] of the chunks, concatenated."""
    ids, positions = [], []
    for chunk in chunks:
        ids.extend(chunk.seq.all_token_ids[chunk.start : chunk.end])
        positions.extend(range(chunk.start, chunk.end))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long)


def _eos_token_ids(model_dir: Path) -> list[int]:
    """EOS ids from config.json and generation_config.json (either may hold an int or a list)."""
    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        path = model_dir / name
        if not path.exists():
            continue
        value = json.loads(path.read_text()).get("eos_token_id")
        for token_id in value if isinstance(value, list) else [value]:
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
    return ids
