"""Physical KV block accounting: reference counts, an LRU free queue, and the prefix-cache hash map.

A block is in exactly one of three states:

    used          ref_count > 0, not in the free queue (some block table holds it)
    free cached   ref_count == 0, in the free queue, has a hash: reusable by a prefix hit
    free empty    ref_count == 0, in the free queue, no hash

Allocation takes the least recently freed block from the head of the queue and, if it
was cached, evicts its hash. A prefix hit on a free cached block `touch`es it out of the
queue. Both are O(1) thanks to an OrderedDict keyed by block id.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(eq=False)
class Block:
    """One physical KV block; `block_hash`/`token_ids` are set only while it is in the prefix cache."""

    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] = ()

    def reset_hash(self) -> None:
        self.block_hash = None
        self.token_ids = ()


class BlockPool:
    """Hands out blocks [0, num_blocks) and keeps freed full blocks findable until evicted."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Head = least recently freed = next to evict. Initially 0, 1, 2, ... in order.
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[bytes, Block] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Free blocks, cached ones included: they are evicted on demand."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks (used or free) registered in the prefix cache."""
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by some sequence."""
        return 1.0 - len(self._free) / len(self.blocks)

    def free_block_ids(self) -> list[int]:
        """Free block ids in eviction order (head first); for tests and debugging."""
        return list(self._free)

    def allocate(self, num_blocks: int) -> list[Block]:
        """Take `num_blocks` blocks from the head of the free queue, evicting their hashes."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if num_blocks > len(self._free):
            raise ValueError(f"asked for {num_blocks} blocks, only {len(self._free)} free")
        blocks = []
        for _ in range(num_blocks):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_count = 1
            blocks.append(block)
        return blocks

    def touch(self, blocks: Iterable[Block]) -> None:
        """Take a reference on blocks found by a prefix hit; free ones leave the free queue."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1

    def free(self, blocks: list[Block]) -> None:
        """Drop one reference per block; `blocks` in block-table order.

        Blocks are returned tail-first, so the end of a sequence is evicted before its
        beginning: the beginning is the part another request is most likely to share.
        """
        for block in reversed(blocks):
            if block.ref_count < 1:
                raise ValueError(f"block {block.block_id} freed more often than allocated")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = block

    def get_cached_block(self, block_hash: bytes, token_ids: tuple[int, ...]) -> Block | None:
        """The cached block for this hash, if its stored tokens really match."""
        block = self._cached.get(block_hash)
        if block is None or block.token_ids != token_ids:
            return None
        return block

    def cache_block(self, block: Block, block_hash: bytes, token_ids: tuple[int, ...]) -> bool:
        """Register a used, full block under its hash. False if it or an equal block is already cached.

        A duplicate (two requests computed the same prefix at once) stays uncached and is
        simply recycled when freed; the first block keeps serving hits.
        """
        if block.ref_count < 1:
            raise ValueError(f"block {block.block_id} is free; only used blocks can be cached")
        if block.block_hash is not None or block_hash in self._cached:
            return False
        block.block_hash, block.token_ids = block_hash, token_ids
        self._cached[block_hash] = block
        return True

    def _evict(self, block: Block) -> None:
        if block.block_hash is not None:
            del self._cached[block.block_hash]
            block.reset_hash()

    def check_integrity(self) -> None:
        """Raise RuntimeError if the accounting is inconsistent."""
        used = [b for b in self.blocks if b.ref_count > 0]
        if len(used) + len(self._free) != len(self.blocks):
            raise RuntimeError(f"{len(used)} used + {len(self._free)} free != {len(self.blocks)} blocks")
        for block in self.blocks:
            if block.ref_count < 0:
                raise RuntimeError(f"block {block.block_id} has ref_count {block.ref_count}")
            if (block.ref_count == 0) != (block.block_id in self._free):
                raise RuntimeError(
                    f"block {block.block_id}: ref_count {block.ref_count} but free={block.block_id in self._free}"
                )
            if block.block_hash is not None and self._cached.get(block.block_hash) is not block:
                raise RuntimeError(f"block {block.block_id} has a hash the cache map does not point back to")
        for block_hash, block in self._cached.items():
            if block.block_hash != block_hash:
                raise RuntimeError(f"cache map entry points to block {block.block_id} with another hash")
