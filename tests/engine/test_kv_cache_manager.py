"""KVCacheManager with toy sizes (block_size 4): exact block ids, prefix hits, eviction order, all-or-nothing allocation."""

import pytest

from tritonrag.engine.kv_cache_manager import KVCacheManager, hash_block


def admit(kv, seq):
    """Admission as the scheduler does it: prefix hits, then slots for the rest of the prompt."""
    hits, num_cached = kv.get_computed_blocks(seq)
    assert kv.allocate_slots(seq, seq.num_tokens - num_cached, hits)
    seq.num_computed_tokens = num_cached
    return num_cached


def compute_all(kv, seq):
    """Pretend the model ran over every known token."""
    seq.num_computed_tokens = seq.num_tokens
    kv.cache_full_blocks(seq)


def refs(kv):
    return [b.ref_count for b in kv.pool.blocks]


def test_prefill_then_prefix_hit_shares_full_blocks(kit):
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = kit.new_seq("a", list(range(10)))  # [0..3] [4..7] [8 9]
    assert kv.get_computed_blocks(a) == ([], 0)
    assert admit(kv, a) == 0
    assert a.block_table == [0, 1, 2]
    compute_all(kv, a)
    h0 = hash_block(None, (0, 1, 2, 3))
    assert kv.pool.blocks[0].block_hash == h0
    assert kv.pool.blocks[1].block_hash == hash_block(h0, (4, 5, 6, 7))
    assert kv.pool.blocks[2].block_hash is None  # partial block: never cached
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (10, 0)

    b = kit.new_seq("b", list(range(8)) + [50, 51, 52])
    assert admit(kv, b) == 8
    assert b.block_table == [0, 1, 3]
    assert refs(kv)[:4] == [2, 2, 1, 1]
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (21, 8)
    kv.check_integrity([a, b])


def test_the_last_prompt_token_is_always_recomputed(kit):
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = kit.new_seq("a", list(range(8)))
    admit(kv, a)
    compute_all(kv, a)
    same = kit.new_seq("same", list(range(8)))  # two full blocks, both cached
    blocks, num_cached = kv.get_computed_blocks(same)
    assert [b.block_id for b in blocks] == [0] and num_cached == 4


def test_hash_is_chained_on_the_prefix(kit):
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = kit.new_seq("a", [0, 1, 2, 3, 4, 5, 6, 7, 8])
    admit(kv, a)
    compute_all(kv, a)
    # Block 1's tokens at the same position, after another first block: not a hit.
    other = kit.new_seq("other", [9, 9, 9, 9, 4, 5, 6, 7, 8])
    assert kv.get_computed_blocks(other) == ([], 0)


def test_freed_blocks_stay_cached_tail_first_and_are_reused(kit):
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = kit.new_seq("a", list(range(10)))
    b = kit.new_seq("b", list(range(8)) + [50, 51, 52])
    admit(kv, a)
    compute_all(kv, a)
    admit(kv, b)
    compute_all(kv, b)
    kv.free(a)
    assert a.block_table == [] and refs(kv)[:4] == [1, 1, 0, 1]
    kv.free(b)
    assert kv.pool.free_block_ids() == [4, 5, 6, 7, 8, 9, 2, 3, 1, 0]
    assert kv.num_free_blocks == 10 and kv.usage == 0.0

    c = kit.new_seq("c", list(range(8)) + [60])
    assert admit(kv, c) == 8
    assert c.block_table == [0, 1, 4]  # hits leave the free queue; 4 is the head
    assert kv.pool.free_block_ids() == [5, 6, 7, 8, 9, 2, 3]
    kv.check_integrity([c])


def test_eviction_takes_the_tail_of_a_freed_sequence_first(kit):
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = kit.new_seq("a", list(range(9)))  # blocks 0 1 2; 0 and 1 cached
    admit(kv, a)
    compute_all(kv, a)
    kv.free(a)
    assert kv.pool.free_block_ids() == [3, 2, 1, 0]
    x = kit.new_seq("x", [70] * 9)
    admit(kv, x)
    assert x.block_table == [3, 2, 1]  # evicts a's second block, keeps its first
    kv.free(x)
    again = kit.new_seq("again", list(range(9)))
    blocks, num_cached = kv.get_computed_blocks(again)
    assert [b.block_id for b in blocks] == [0] and num_cached == 4


def test_failed_allocation_changes_nothing(kit):
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = kit.new_seq("a", list(range(9)))
    admit(kv, a)
    compute_all(kv, a)
    kv.free(a)
    before = (refs(kv), kv.pool.free_block_ids(), kv.prefix_cache_queries, kv.prefix_cache_hits)

    big = kit.new_seq("big", list(range(8)) + [80] * 9)  # 17 tokens = 5 blocks > 4
    hits, num_cached = kv.get_computed_blocks(big)
    assert num_cached == 8
    assert not kv.allocate_slots(big, 9, hits)
    assert big.block_table == []
    assert before == (refs(kv), kv.pool.free_block_ids(), kv.prefix_cache_queries, kv.prefix_cache_hits)


def test_free_prefix_hits_count_against_the_free_blocks(kit):
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = kit.new_seq("a", list(range(9)))
    admit(kv, a)
    compute_all(kv, a)
    kv.free(a)
    # 8 cached + 9 new = 17 tokens = 5 blocks: 3 new blocks, but only 4 - 2 hits = 2 are spare.
    too_big = kit.new_seq("too_big", list(range(8)) + [80] * 9)
    hits, _ = kv.get_computed_blocks(too_big)
    assert not kv.allocate_slots(too_big, 9, hits)
    # 8 cached + 8 new = 16 tokens = 4 blocks: fits exactly.
    fits = kit.new_seq("fits", list(range(8)) + [80] * 8)
    assert admit(kv, fits) == 8
    assert fits.block_table == [0, 1, 3, 2] and kv.num_free_blocks == 0
    kv.check_integrity([fits])


def test_decode_grows_the_table_one_block_at_a_time(kit):
    kv = KVCacheManager(num_blocks=4, block_size=4)
    seq = kit.new_seq("s", [1, 2, 3, 4])
    admit(kv, seq)
    assert seq.block_table == [0]
    tables = []
    for token in range(5):
        seq.num_computed_tokens = seq.num_tokens
        seq.output_token_ids.append(token)  # sampled: 1 new token to compute
        assert kv.allocate_slots(seq, 1)
        tables.append(list(seq.block_table))
    assert tables == [[0, 1], [0, 1], [0, 1], [0, 1], [0, 1, 2]]


def test_output_tokens_are_cached_too(kit):
    kv = KVCacheManager(num_blocks=8, block_size=4)
    seq = kit.new_seq("s", [1, 2, 3])
    admit(kv, seq)
    seq.output_token_ids += [4, 5, 6]  # computed through decodes
    kv.allocate_slots(seq, 3)
    compute_all(kv, seq)
    kv.free(seq)
    follow_up = kit.new_seq("f", [1, 2, 3, 4, 5, 6])
    assert kv.get_computed_blocks(follow_up)[1] == 4


def test_prefix_caching_disabled(kit):
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = kit.new_seq("a", list(range(9)))
    admit(kv, a)
    compute_all(kv, a)
    assert kv.pool.num_cached_blocks == 0
    assert kv.get_computed_blocks(kit.new_seq("b", list(range(9)))) == ([], 0)
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (0, 0)


def test_bad_arguments_raise(kit):
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = kit.new_seq("a", list(range(9)))
    admit(kv, a)
    compute_all(kv, a)
    with pytest.raises(ValueError):
        kv.allocate_slots(a, 0)
    other = kit.new_seq("o", list(range(9)))
    hits, _ = kv.get_computed_blocks(other)
    with pytest.raises(ValueError, match="admission"):
        kv.allocate_slots(a, 1, hits)
    with pytest.raises(ValueError):
        KVCacheManager(num_blocks=8, block_size=0)


def test_check_integrity_catches_a_stale_block_table(kit):
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = kit.new_seq("a", list(range(6)))
    admit(kv, a)
    kv.check_integrity([a])
    a.block_table.append(5)  # a block the pool thinks is free
    with pytest.raises(RuntimeError):
        kv.check_integrity([a])


def test_hash_block_is_deterministic_and_chained():
    assert hash_block(None, [1, 2]) == hash_block(None, (1, 2))
    assert hash_block(None, [1, 2]) != hash_block(hash_block(None, [0]), [1, 2])
    assert len(hash_block(None, [1])) == 32
