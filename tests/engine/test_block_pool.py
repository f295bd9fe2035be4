"""BlockPool: allocation order, tail-first freeing, LRU eviction of cached blocks, integrity checks."""

import pytest

from tritonrag.engine.block_pool import BlockPool


def ids(blocks):
    return [b.block_id for b in blocks]


def test_fresh_pool_allocates_in_order_and_counts_usage():
    pool = BlockPool(4)
    assert pool.num_free_blocks == 4 and pool.usage == 0.0
    assert ids(pool.allocate(3)) == [0, 1, 2]
    assert pool.num_free_blocks == 1
    assert pool.usage == pytest.approx(0.75)
    assert [b.ref_count for b in pool.blocks] == [1, 1, 1, 0]
    pool.check_integrity()


def test_allocate_more_than_free_raises_and_changes_nothing():
    pool = BlockPool(2)
    with pytest.raises(ValueError, match="only 2 free"):
        pool.allocate(3)
    assert pool.num_free_blocks == 2
    with pytest.raises(ValueError):
        pool.allocate(-1)
    assert pool.allocate(0) == []


def test_free_returns_blocks_tail_first():
    pool = BlockPool(6)
    table = pool.allocate(4)  # 0 1 2 3
    pool.free(table)
    assert pool.free_block_ids() == [4, 5, 3, 2, 1, 0]
    assert ids(pool.allocate(3)) == [4, 5, 3]  # the tail of the freed table goes first
    pool.check_integrity()


def test_shared_block_is_freed_only_by_its_last_holder():
    pool = BlockPool(3)
    (block,) = pool.allocate(1)
    pool.touch([block])
    assert block.ref_count == 2
    pool.free([block])
    assert block.ref_count == 1 and pool.num_free_blocks == 2
    pool.free([block])
    assert block.ref_count == 0 and pool.num_free_blocks == 3
    with pytest.raises(ValueError, match="freed more often"):
        pool.free([block])
    pool.check_integrity()


def test_cached_free_block_is_found_touched_and_leaves_the_free_queue():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    assert pool.cache_block(a, b"h-a", (1, 2))
    pool.free([a, b])
    assert pool.free_block_ids() == [2, 3, 1, 0]
    hit = pool.get_cached_block(b"h-a", (1, 2))
    assert hit is a and hit.ref_count == 0
    pool.touch([hit])
    assert a.ref_count == 1 and pool.free_block_ids() == [2, 3, 1]
    assert a.block_hash == b"h-a"  # still cached while used
    pool.check_integrity()


def test_hit_double_checks_the_stored_tokens():
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    pool.cache_block(block, b"h", (1, 2))
    assert pool.get_cached_block(b"h", (1, 2)) is block
    assert pool.get_cached_block(b"h", (3, 4)) is None  # a hash collision is not a hit
    assert pool.get_cached_block(b"other", (1, 2)) is None


def test_eviction_is_lru_and_forgets_the_hash():
    pool = BlockPool(3)
    blocks = pool.allocate(3)
    for i, block in enumerate(blocks):
        pool.cache_block(block, f"h{i}".encode(), (i,))
    pool.free([blocks[1]])  # freed first: evicted first
    pool.free([blocks[2]])
    pool.free([blocks[0]])
    assert pool.free_block_ids() == [1, 2, 0]
    (evicted,) = pool.allocate(1)
    assert evicted is blocks[1]
    assert evicted.block_hash is None and evicted.token_ids == ()
    assert pool.get_cached_block(b"h1", (1,)) is None
    assert pool.get_cached_block(b"h2", (2,)) is blocks[2]
    assert pool.num_cached_blocks == 2
    pool.check_integrity()


def test_touching_a_block_saves_it_from_eviction():
    pool = BlockPool(3)
    blocks = pool.allocate(3)
    pool.cache_block(blocks[0], b"h0", (0,))
    pool.free(blocks)  # free order 2, 1, 0
    pool.touch([blocks[0]])
    assert ids(pool.allocate(2)) == [2, 1]
    assert pool.num_free_blocks == 0
    assert blocks[0].block_hash == b"h0"
    pool.check_integrity()


def test_duplicate_cache_entry_is_refused():
    pool = BlockPool(3)
    a, b = pool.allocate(2)
    assert pool.cache_block(a, b"h", (1,))
    assert not pool.cache_block(b, b"h", (1,))  # same content computed twice: first one wins
    assert b.block_hash is None
    assert not pool.cache_block(a, b"h2", (2,))  # already cached under its own hash
    pool.free([a, b])
    pool.check_integrity()


def test_free_block_cannot_be_cached():
    pool = BlockPool(1)
    with pytest.raises(ValueError, match="is free"):
        pool.cache_block(pool.blocks[0], b"h", (1,))


def test_check_integrity_catches_corruption():
    pool = BlockPool(3)
    a, _ = pool.allocate(2)
    pool.check_integrity()
    a.ref_count = 0  # "freed" without going back to the queue
    with pytest.raises(RuntimeError):
        pool.check_integrity()
    a.ref_count = 1
    a.block_hash = b"stray"  # a hash the map does not know
    with pytest.raises(RuntimeError, match="hash"):
        pool.check_integrity()


def test_pool_needs_a_block():
    with pytest.raises(ValueError):
        BlockPool(0)
