"""What every model runner shares: KV pool sizing and allocation, EOS ids, the order chunks are packed in.

A runner owns the weights and the paged KV cache and turns a SchedulerOutput into logits.
`ModelRunner` (torch_runner) runs our torch Llama; `OnnxModelRunner` and `TrtModelRunner` run
the exported step graph (step_graph) over the same pool layout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.runners.llama import LlamaConfig
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PagedRunner:
    """KV pool and bookkeeping common to every runtime; subclasses implement `execute`.

    The KV cache is one tensor [layers, 2 (K, V), num_blocks, block_size, kv_heads, head_dim];
    the scheduler hands out block ids in [0, num_kv_blocks).
    """

    runtime = "none"

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.num_threads > 0:  # torch's ops around the model (KV writes, sampling) too, whatever the runtime
            torch.set_num_threads(config.num_threads)
        self.device = torch.device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.model_config = LlamaConfig.from_dir(config.model_dir)
        self.block_size = config.block_size
        self.num_kv_blocks = num_kv_blocks(config, self.model_config)
        self.eos_token_ids = _eos_token_ids(Path(config.model_dir))

    def allocate_kv_cache(self) -> torch.Tensor:
        """The zeroed pool [L, 2, num_blocks, block_size, KVH, D] in the runner's dtype and device."""
        cfg = self.model_config
        return torch.zeros(
            cfg.num_layers,
            2,
            self.num_kv_blocks,
            self.block_size,
            cfg.num_kv_heads,
            cfg.head_dim,
            dtype=self.dtype,
            device=self.device,
        )

    def log_ready(self) -> None:
        log.info(
            "model runner (%s): %s %s, %d KV blocks of %d tokens (%.1f MiB)",
            self.runtime,
            self.config.dtype,
            self.device,
            self.num_kv_blocks,
            self.block_size,
            self.num_kv_blocks * self.bytes_per_block / 2**20,
        )

    @property
    def vocab_size(self) -> int:
        return self.model_config.vocab_size

    @property
    def bytes_per_block(self) -> int:
        return kv_bytes_per_block(self.model_config, self.block_size, self.config.dtype)

    def empty_logits(self) -> torch.Tensor:
        return torch.empty(0, self.vocab_size)

    def execute(self, out: SchedulerOutput) -> torch.Tensor:
        raise NotImplementedError


def order_chunks(out: SchedulerOutput) -> tuple[list[ScheduledChunk], list[int]]:
    """Chunks in packing order (single-query ones first, so attention can batch them) and
    the packed row of each sampling chunk's last token, in the scheduler's chunk order."""
    chunks = [c for c in out.chunks if c.num_new_tokens == 1] + [c for c in out.chunks if c.num_new_tokens != 1]
    last_row, row = {}, 0
    for chunk in chunks:
        row += chunk.num_new_tokens
        last_row[id(chunk)] = row - 1
    return chunks, [last_row[id(c)] for c in out.chunks if c.samples]


def pack_tokens(chunks: list[ScheduledChunk]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and positions [T] of the chunks, concatenated."""
    ids: list[int] = []
    positions: list[int] = []
    for chunk in chunks:
        ids.extend(chunk.seq.all_token_ids[chunk.start : chunk.end])
        positions.extend(range(chunk.start, chunk.end))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long)


def kv_bytes_per_block(model: LlamaConfig, block_size: int, dtype: str) -> int:
    """KV cache bytes of one block: K and V, every layer, block_size tokens (also what the
    TensorRT builder sizes the pool's profile by, without building a runner)."""
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * itemsize


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


def num_kv_blocks(config: EngineConfig, model: LlamaConfig) -> int:
    """Blocks the KV pool holds: num_kv_blocks, or kv_cache_memory_bytes over one block's bytes.

    The one formula: runners allocate this many and the TensorRT builder profiles for it.
    """
    if config.num_kv_blocks:
        return config.num_kv_blocks
    per_block = kv_bytes_per_block(model, config.block_size, config.dtype)
    if config.kv_cache_memory_bytes < per_block:
        raise ValueError(
            f"kv_cache_memory_bytes={config.kv_cache_memory_bytes} is less than one block ({per_block} bytes)"
        )
    return config.kv_cache_memory_bytes // per_block
