"""Per-sequence block tables over the block pool, with prefix caching of full blocks.

A full block is keyed by a chained hash: sha256(parent block's hash + its token ids).
The chain makes a block's key depend on every token before it, so a hit on block i
implies hits on blocks 0..i-1; a lookup also compares the stored token ids (a hit must
never hand one request another request's keys and values). sha256 rather than
Python's `hash` because the prefix cache is shared between tenants: Python's integer
hash is trivial to collide on purpose.

The sequence state (`seq.block_table`, `seq.num_computed_tokens`) lives in the
Sequence; this class owns the blocks and the per-sequence chain of block hashes.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable
from collections.abc import Sequence as Seq

from tritonrag.engine.block_pool import Block, BlockPool
from tritonrag.engine.sequence import Sequence


def hash_block(parent_hash: bytes | None, token_ids: Seq[int]) -> bytes:
    """Chained key of one full block."""
    digest = hashlib.sha256(parent_hash or b"")
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class KVCacheManager:
    """Grows, caches and frees the block tables of sequences."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self._hashes: dict[str, list[bytes]] = {}  # request_id -> hashes of its full, cached-or-not blocks
        self.prefix_cache_queries = 0  # prompt tokens looked up at admission
        self.prefix_cache_hits = 0  # of which served from the cache

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, seq: Sequence) -> tuple[list[Block], int]:
        """Longest cached prefix of `seq`'s full blocks and its length in tokens.

        Never the whole sequence: the last token is always recomputed, because its
        logits are what the next token is sampled from. Changes nothing.
        """
        if not self.enable_prefix_caching:
            return [], 0
        tokens = seq.all_token_ids
        blocks: list[Block] = []
        parent: bytes | None = None
        for i in range((len(tokens) - 1) // self.block_size):
            block_tokens = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            parent = hash_block(parent, block_tokens)
            block = self.pool.get_cached_block(parent, block_tokens)
            if block is None:
                break
            blocks.append(block)
        return blocks, len(blocks) * self.block_size

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, computed_blocks: Seq[Block] = ()) -> bool:
        """Grow `seq.block_table` to hold its computed tokens plus `num_new_tokens`.

        On admission (empty block table) `computed_blocks` are the prefix hits from
        `get_computed_blocks`; they count as computed and are shared, not copied:

            |<- computed_blocks ->|<------ num_new_tokens ------>|
            [ hit 0 ][ hit 1 ]     [ new 2 ][ new 3 ][ new 4 ]
             ref += 1 (shared)      allocated now, ref = 1

        For a running sequence, tokens [0, num_computed_tokens) are already covered:

            |<- num_computed_tokens ->|<- num_new_tokens ->|
            [ blk 0 ][ blk 1 ][ blk 2 .. ][ new 3 ]
                       owned already       allocated now

        Returns False, changing nothing, if the free blocks (after the hits leave
        the free queue) are too few. The caller then sets `num_computed_tokens`.
        """
        if num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be >= 1, got {num_new_tokens}")
        if computed_blocks and seq.block_table:
            raise ValueError(f"{seq.request_id}: prefix hits can only be attached on admission")
        num_computed = len(computed_blocks) * self.block_size if computed_blocks else seq.num_computed_tokens
        owned = len(seq.block_table) + len(computed_blocks)
        num_new_blocks = self.blocks_needed(num_computed + num_new_tokens) - owned
        free_hits = sum(1 for block in computed_blocks if block.ref_count == 0)
        if num_new_blocks > self.pool.num_free_blocks - free_hits:
            return False
        admitting = not seq.block_table
        if admitting:
            self._attach_hits(seq, computed_blocks)
        # Touch the hits first: allocating could otherwise evict one of them.
        new_blocks = self.pool.allocate(max(num_new_blocks, 0))
        seq.block_table.extend(block.block_id for block in new_blocks)
        return True

    def _attach_hits(self, seq: Sequence, computed_blocks: Seq[Block]) -> None:
        self.pool.touch(computed_blocks)
        seq.block_table.extend(block.block_id for block in computed_blocks)
        self._hashes[seq.request_id] = [block.block_hash for block in computed_blocks if block.block_hash is not None]
        if self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += len(computed_blocks) * self.block_size

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks that `num_computed_tokens` has filled since the last call."""
        if not self.enable_prefix_caching:
            return
        hashes = self._hashes.setdefault(seq.request_id, [])
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        if num_full <= len(hashes):
            return  # most decode steps: no block filled up
        tokens = seq.all_token_ids
        for i in range(len(hashes), num_full):
            block_tokens = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            hashes.append(hash_block(hashes[-1] if hashes else None, block_tokens))
            self.pool.cache_block(self.pool.blocks[seq.block_table[i]], hashes[-1], block_tokens)

    def free(self, seq: Sequence) -> None:
        """Give back all of `seq`'s blocks (tail first) and empty its block table."""
        self.pool.free([self.pool.blocks[block_id] for block_id in seq.block_table])
        seq.block_table.clear()
        self._hashes.pop(seq.request_id, None)

    def check_integrity(self, seqs: Iterable[Sequence]) -> None:
        """Raise RuntimeError unless every block's ref_count equals the block tables holding it."""
        self.pool.check_integrity()
        refs = [0] * self.pool.num_blocks
        for seq in seqs:
            if len(seq.block_table) < self.blocks_needed(seq.num_computed_tokens):
                raise RuntimeError(
                    f"{seq.request_id}: block table too short for {seq.num_computed_tokens} computed tokens"
                )
            for block_id in seq.block_table:
                refs[block_id] += 1
        for block in self.pool.blocks:
            if refs[block.block_id] != block.ref_count:
                raise RuntimeError(
                    f"block {block.block_id}: ref_count {block.ref_count}, held by {refs[block.block_id]} tables"
                )
