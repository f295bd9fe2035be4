"""Scheduler: budgets, chunked prefill, prefix hits at admission, preemption, rejection, abort.

Every scenario checks the block accounting after every step (`kit.scheduler_step`)
and ends with every block back in the pool.
"""

import pytest

from tritonrag.engine.scheduler import Scheduler
from tritonrag.engine.sequence import FinishReason, SequenceStatus
from tritonrag.errors import InvalidInput, Unavailable


def make_scheduler(kit, num_blocks=64, **overrides):
    return Scheduler(kit.make_config(**overrides), num_blocks)


def drive(kit, sched, max_steps=1000, on_step=None):
    """Step until nothing is left; returns every step's output."""
    outs = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            kit.check_all_free(sched)
            return outs
        sched.take_failed()
        outs.append(kit.scheduler_step(sched))
        if on_step is not None:
            on_step(outs[-1])
    raise AssertionError("scheduler did not drain")


# ---- admission control ---------------------------------------------------------------
def test_add_rejects_prompts_that_can_never_run(kit):
    sched = make_scheduler(kit, num_blocks=8, max_model_len=40)
    with pytest.raises(InvalidInput, match="empty"):
        sched.add(kit.new_seq("empty", []))
    with pytest.raises(InvalidInput, match="limit is 39"):
        sched.add(kit.new_seq("long", [1] * 40))
    with pytest.raises(InvalidInput, match="KV cache"):
        sched.add(kit.new_seq("huge", [1] * 33))  # 9 blocks > 8
    sched.add(kit.new_seq("ok", [1] * 32))
    with pytest.raises(InvalidInput, match="already in flight"):
        sched.add(kit.new_seq("ok", [1]))
    assert sched.num_waiting == 1


def test_full_waiting_queue_is_unavailable_not_invalid(kit):
    sched = make_scheduler(kit, max_waiting=2)
    sched.add(kit.new_seq("a", [1]))
    sched.add(kit.new_seq("b", [1]))
    with pytest.raises(Unavailable, match="queue is full"):
        sched.add(kit.new_seq("c", [1]))
    kit.scheduler_step(sched)  # a and b start running
    sched.add(kit.new_seq("c", [1]))  # room again
    drive(kit, sched)


# ---- budgets -------------------------------------------------------------------------
def test_token_budget_and_max_num_seqs_hold_every_step(kit):
    sched = make_scheduler(kit, max_num_seqs=3, max_num_batched_tokens=10)
    lengths = [3, 12, 5, 20, 1, 7, 9, 4]
    seqs = [kit.new_seq(f"s{i}", list(range(1, n + 1)), max_tokens=2 + i) for i, n in enumerate(lengths)]
    for seq in seqs:
        sched.add(seq)

    def check(out):
        assert out.num_batched_tokens <= 10
        assert len(out.chunks) <= 3 and sched.num_running <= 3

    outs = drive(kit, sched, on_step=check)
    assert all(len(s.output_token_ids) == s.sampling.max_tokens for s in seqs)
    assert all(s.finish_reason is FinishReason.LENGTH for s in seqs)
    assert max(o.num_batched_tokens for o in outs) == 10  # the budget is actually used


def test_admission_is_first_come_first_served(kit):
    sched = make_scheduler(kit, max_num_seqs=1)
    for name in "abc":
        sched.add(kit.new_seq(name, [1, 2], max_tokens=2))
    order = []
    drive(kit, sched, on_step=lambda out: order.extend(rid for rid, (start, _) in out.chunks.items() if start == 0))
    assert order == ["a", "b", "c"]


def first_chunk_order(kit, sched) -> list[str]:
    """Request ids in the order their prompts got a first token (their prefill finished)."""
    order: list[str] = []
    drive(kit, sched, on_step=lambda out: order.extend(rid for rid in out.sampled if rid not in order))
    return order


@pytest.mark.parametrize("prefill_order", ["fcfs", "shortest"])
def test_either_prefill_order_keeps_budgets_and_drains(kit, prefill_order):
    sched = make_scheduler(kit, max_num_seqs=3, max_num_batched_tokens=10, prefill_order=prefill_order)
    seqs = [kit.new_seq(f"s{i}", list(range(1, n + 1)), max_tokens=4) for i, n in enumerate([30, 3, 12, 1, 25, 7])]
    for seq in seqs:
        sched.add(seq)

    decoding: set[str] = set()  # running with a first token after the previous step

    def check(out):
        assert out.num_batched_tokens <= 10 and sched.num_running <= 3
        assert decoding <= set(out.chunks), f"a running decode waited: {decoding - set(out.chunks)}"
        decoding.clear()
        decoding.update(s.request_id for s in sched.running if s.output_token_ids)

    drive(kit, sched, on_step=check)
    assert all(len(s.output_token_ids) == 4 for s in seqs)


def test_shortest_first_gives_short_prompts_their_first_token_before_long_ones(kit):
    lengths = {"long": 40, "short": 4, "mid": 10}
    orders = {}
    for prefill_order in ("fcfs", "shortest"):
        sched = make_scheduler(kit, max_num_batched_tokens=8, prefill_order=prefill_order)
        for name, n in lengths.items():
            sched.add(kit.new_seq(name, list(range(n)), max_tokens=3))
        orders[prefill_order] = first_chunk_order(kit, sched)
    assert orders == {"fcfs": ["long", "short", "mid"], "shortest": ["short", "mid", "long"]}


def test_shortest_first_lets_a_new_short_prompt_overtake_a_long_one_mid_prefill(kit):
    sched = make_scheduler(kit, max_num_batched_tokens=8, prefill_order="shortest")
    long = kit.new_seq("long", list(range(40)), max_tokens=2)
    sched.add(long)
    assert kit.scheduler_step(sched).chunks == {"long": (0, 8)}
    sched.add(kit.new_seq("short", [1, 2, 3, 4, 5], max_tokens=2))
    assert kit.scheduler_step(sched).chunks == {"short": (0, 5), "long": (8, 3)}  # the long one gets what is left
    out = kit.scheduler_step(sched)
    assert out.chunks == {"short": (5, 1), "long": (11, 7)}  # the short one decodes first
    drive(kit, sched)


def test_shortest_first_serves_a_starved_prompt_ahead_of_shorter_ones(kit):
    """The fairness rule: past prefill_starvation_s since arrival, a prompt ranks first."""
    sched = make_scheduler(kit, max_num_batched_tokens=8, prefill_order="shortest", prefill_starvation_s=5.0)
    long, short = kit.new_seq("long", list(range(20)), max_tokens=2), kit.new_seq("short", [1, 2, 3], max_tokens=2)
    sched.add(long)
    sched.add(short)
    long.arrival_time = short.arrival_time - 6.0  # waited past the limit
    assert sched.schedule(now=short.arrival_time + 0.1).chunks[0].seq is long
    fresh = make_scheduler(kit, max_num_batched_tokens=8, prefill_order="shortest", prefill_starvation_s=5.0)
    a, b = kit.new_seq("a", list(range(20))), kit.new_seq("b", [1, 2, 3])
    fresh.add(a)
    fresh.add(b)
    assert [c.seq.request_id for c in fresh.schedule(now=b.arrival_time).chunks] == ["b", "a"]


def test_a_fresh_prompt_behind_a_backlog_of_starved_ones_gets_its_share_of_the_budget(kit):
    """Starved prompts still go first, but take at most prefill_starved_share of the budget while others wait."""

    def first_step(share):
        sched = make_scheduler(
            kit,
            max_num_batched_tokens=16,
            prefill_order="shortest",
            prefill_starvation_s=5.0,
            prefill_starved_share=share,
        )
        old = [kit.new_seq(f"old{i}", list(range(30)), max_tokens=2) for i in range(2)]
        short = kit.new_seq("short", [1, 2, 3, 4, 5], max_tokens=2)
        for seq in [*old, short]:
            sched.add(seq)
        for seq in old:
            seq.arrival_time = short.arrival_time - 6.0  # waited past the limit
        out = sched.schedule(now=short.arrival_time + 0.1)
        return {c.seq.request_id: (c.start, c.num_new_tokens) for c in out.chunks}

    assert first_step(0.5) == {"old0": (0, 11), "short": (0, 5)}  # the starved take what the short one leaves
    assert first_step(1.0) == {"old0": (0, 16)}  # all of it to the backlog, as before the share
    with pytest.raises(ValueError, match="prefill_starved_share"):
        kit.make_config(prefill_starved_share=0)


def test_shortest_first_under_a_tiny_pool_preempts_and_still_drains(kit):
    sched = make_scheduler(kit, num_blocks=6, max_num_batched_tokens=8, prefill_order="shortest")
    seqs = [kit.new_seq(name, [i] * n, max_tokens=12) for i, (name, n) in enumerate([("a", 9), ("b", 4), ("c", 6)])]
    for seq in seqs:
        sched.add(seq)
    drive(kit, sched)
    assert sched.num_preemptions > 0
    assert all(len(s.output_token_ids) == 12 for s in seqs)


def test_an_unknown_prefill_order_is_refused(kit):
    with pytest.raises(ValueError, match="prefill_order must be one of fcfs, shortest"):
        kit.make_config(prefill_order="sjf")


# ---- chunked prefill -----------------------------------------------------------------
def test_chunked_prefill_splits_a_long_prompt_while_decodes_run_every_step(kit):
    sched = make_scheduler(kit, max_num_batched_tokens=8)
    d1, d2 = kit.new_seq("d1", [1, 2], max_tokens=30), kit.new_seq("d2", [3, 4], max_tokens=30)
    sched.add(d1)
    sched.add(d2)
    assert kit.scheduler_step(sched).chunks == {"d1": (0, 2), "d2": (0, 2)}
    long = kit.new_seq("long", list(range(40)), max_tokens=2)
    sched.add(long)
    starts = []
    while not long.output_token_ids:
        out = kit.scheduler_step(sched)
        chunks = out.chunks
        assert chunks["d1"][1] == 1 and chunks["d2"][1] == 1  # decodes never stall
        assert out.num_batched_tokens <= 8
        starts.append(chunks["long"])
    assert starts == [(0, 6), (6, 6), (12, 6), (18, 6), (24, 6), (30, 6), (36, 4)]
    drive(kit, sched)


def test_without_chunked_prefill_a_prompt_waits_for_a_budget_that_fits_it(kit):
    sched = make_scheduler(kit, enable_chunked_prefill=False, max_model_len=16, max_num_batched_tokens=16)
    d1, d2 = kit.new_seq("d1", [1], max_tokens=10), kit.new_seq("d2", [2], max_tokens=3)
    sched.add(d1)
    sched.add(d2)
    kit.scheduler_step(sched)
    long = kit.new_seq("long", list(range(15)), max_tokens=1)
    sched.add(long)
    long_chunks = []
    drive(
        kit,
        sched,
        on_step=lambda out: long_chunks.append((d2.is_finished, out.chunks["long"])) if "long" in out.chunks else None,
    )
    assert long_chunks == [(True, (0, 15))]  # whole, once d2 finished


# ---- prefix caching at admission -----------------------------------------------------
def test_prefix_hit_at_admission_skips_the_cached_prefill(kit):
    sched = make_scheduler(kit)
    sched.add(kit.new_seq("a", list(range(10)), max_tokens=1))
    drive(kit, sched)
    b = kit.new_seq("b", list(range(8)) + [90, 91])
    sched.add(b)
    out = kit.scheduler_step(sched)
    assert out.chunks == {"b": (8, 2)}
    assert b.num_cached_tokens == 8
    assert (sched.kv.prefix_cache_queries, sched.kv.prefix_cache_hits) == (20, 8)
    drive(kit, sched)


def test_same_prompt_admitted_together_is_computed_twice_then_cached_once(kit):
    sched = make_scheduler(kit)
    prompt = list(range(9))
    sched.add(kit.new_seq("a", prompt, max_tokens=2))
    sched.add(kit.new_seq("b", prompt, max_tokens=2))
    out = kit.scheduler_step(sched)
    assert out.chunks == {"a": (0, 9), "b": (0, 9)}
    assert sched.kv.pool.num_cached_blocks == 2  # b's copies are plain duplicates
    drive(kit, sched)
    c = kit.new_seq("c", prompt, max_tokens=1)
    sched.add(c)
    assert kit.scheduler_step(sched).chunks == {"c": (8, 1)}
    drive(kit, sched)


# ---- preemption ----------------------------------------------------------------------
def test_preemption_under_a_tiny_pool_then_both_complete(kit):
    sched = make_scheduler(kit, num_blocks=4)
    a, b = kit.new_seq("a", [1, 2, 3, 4], max_tokens=8), kit.new_seq("b", [5, 6, 7, 8], max_tokens=8)
    sched.add(a)
    sched.add(b)
    preempted = []
    for _ in range(6):  # prefill, then decodes: the 6th step computes token 8, which needs a 3rd block
        out = kit.scheduler_step(sched)
        preempted += out.preempted
    assert preempted == [b]  # the newest goes
    assert sched.waiting[0] is b and b.status is SequenceStatus.WAITING
    assert b.block_table == [] and b.num_computed_tokens == 0
    assert (b.num_preemptions, sched.num_preemptions) == (1, 1)
    assert out.chunks == {"a": (8, 1)}  # nobody is admitted in a preempting step
    drive(kit, sched)
    assert len(a.output_token_ids) == 8 and len(b.output_token_ids) == 8
    assert a.finish_reason is b.finish_reason is FinishReason.LENGTH


def test_preemption_takes_the_most_recently_admitted_first(kit):
    sched = make_scheduler(kit, num_blocks=6)
    seqs = [kit.new_seq(name, [i] * 4, max_tokens=12) for i, name in enumerate("abc")]
    for seq in seqs:
        sched.add(seq)
    order = []
    drive(kit, sched, on_step=lambda out: order.extend(s.request_id for s in out.preempted))
    assert order[:2] == ["c", "b"]
    assert sched.num_preemptions == len(order)
    assert all(len(s.output_token_ids) == 12 for s in seqs)


def test_a_sequence_that_outgrows_the_whole_pool_fails_instead_of_looping(kit):
    sched = make_scheduler(kit, num_blocks=3)  # 12 tokens
    seq = kit.new_seq("s", [1, 2, 3, 4], max_tokens=20)
    sched.add(seq)
    failed = []
    for _ in range(20):
        if not sched.has_unfinished():
            break
        kit.scheduler_step(sched)
        failed += sched.take_failed()
    assert failed == [seq] and seq.finish_reason is FinishReason.ERROR
    assert len(seq.output_token_ids) == 9  # 13 tokens would need a 4th block
    assert sched.num_preemptions == 0
    kit.check_all_free(sched)


def test_a_waiting_sequence_that_cannot_fit_fails_at_admission(kit):
    sched = make_scheduler(kit, num_blocks=3)
    seq = kit.new_seq("s", [1, 2, 3, 4])
    seq.output_token_ids = list(range(10))  # as if preempted after 10 tokens
    sched.add(seq)
    other = kit.new_seq("o", [1], max_tokens=1)
    sched.add(other)
    out = kit.scheduler_step(sched)
    assert out.chunks == {"o": (0, 1)}  # the next one is admitted the same step
    assert sched.take_failed() == [seq]
    drive(kit, sched)


# ---- finishing -----------------------------------------------------------------------
def test_abort_waiting_and_running_frees_blocks(kit):
    sched = make_scheduler(kit, max_num_seqs=1, prefill_order="fcfs")  # the longer one first
    run, wait = kit.new_seq("run", list(range(9))), kit.new_seq("wait", list(range(5)))
    sched.add(run)
    sched.add(wait)
    kit.scheduler_step(sched)
    assert run.status is SequenceStatus.RUNNING and sched.kv.num_free_blocks == 64 - 3
    assert sched.abort("wait") is wait and wait.finish_reason is FinishReason.ABORT
    assert sched.abort("run") is run and run.block_table == []
    assert sched.abort("run") is None and sched.abort("nobody") is None
    kit.check_all_free(sched)


def test_finish_frees_blocks_at_once(kit):
    sched = make_scheduler(kit)
    seq = kit.new_seq("s", list(range(6)))
    sched.add(seq)
    kit.scheduler_step(sched)
    sched.finish(seq, FinishReason.STOP)
    assert seq.is_finished and seq.finish_reason is FinishReason.STOP
    sched.finish(seq, FinishReason.ABORT)  # idempotent
    assert seq.finish_reason is FinishReason.STOP
    kit.check_all_free(sched)


def test_update_after_step_wants_exactly_the_sampling_chunks(kit):
    sched = make_scheduler(kit, max_num_batched_tokens=4, max_num_seqs=4)
    sched.add(kit.new_seq("a", list(range(6))))
    out = sched.schedule()  # a partial chunk: nothing to sample
    with pytest.raises(ValueError):
        sched.update_after_step(out, {"a": 1})
    sched.update_after_step(out, {})
    assert sched.get("a").num_computed_tokens == 4


def test_check_integrity_catches_a_waiting_sequence_holding_blocks(kit):
    sched = make_scheduler(kit)
    seq = kit.new_seq("s", [1, 2])
    sched.add(seq)
    seq.block_table.append(3)
    with pytest.raises(RuntimeError):
        sched.check_integrity()
