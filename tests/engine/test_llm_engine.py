"""LLMEngine against a fake model that reads its context back through the block tables.

The fake's answer depends on every token at every position, as read from the paged
"KV cache" at block_table[pos // block_size] * block_size + pos % block_size; so the
engine's outputs equal the reference only if prefix hits, chunked prefill and
preemption left the block tables right.
"""

import math

import pytest

from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.sampler import Sampler
from tritonrag.engine.sequence import FinishReason
from tritonrag.errors import InvalidInput, Unavailable
from tritonrag.sampling import SamplingParams


def prompts_with_shared_prefix(n, prefix_len=13, tail_len=5):
    prefix = [(7 * i + 3) % 97 for i in range(prefix_len)]
    return [prefix + [(11 * r + j) % 97 for j in range(tail_len + r % 3)] for r in range(n)]


def submit(engine, prompts, max_tokens=6, **sampling):
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, **sampling))


def assert_matches_reference(kit, results, prompts, max_tokens=6, **kwargs):
    for i, prompt in enumerate(prompts):
        result = results[f"r{i}"]
        assert result.tokens == kit.reference(prompt, max_tokens, **kwargs), f"r{i}"
        assert result.final.num_output_tokens == len(result.tokens)
        assert result.final.num_prompt_tokens == len(prompt)


def test_single_request_matches_reference(kit):
    engine, _ = kit.make_engine()
    engine.add_request("r0", [5, 6, 7], SamplingParams(max_tokens=10))
    results = kit.run_engine(engine)
    assert results["r0"].tokens == kit.reference([5, 6, 7], 10)
    assert results["r0"].final.finish_reason is FinishReason.LENGTH


def test_many_requests_with_prefix_hits_match_reference(kit):
    engine, _ = kit.make_engine(max_num_seqs=4)
    prompts = prompts_with_shared_prefix(10)
    submit(engine, prompts)
    results = kit.run_engine(engine)
    assert_matches_reference(kit, results, prompts)
    stats = engine.stats()
    assert stats.prefix_cache_hits > 0 and stats.prefix_cache_queries == sum(map(len, prompts))
    assert any(r.final.num_cached_tokens == 12 for r in results.values())  # 3 shared full blocks
    assert stats.prompt_tokens_total == sum(map(len, prompts))
    assert stats.generation_tokens_total == 6 * len(prompts)


def test_a_second_wave_is_served_from_the_cache(kit):
    engine, runner = kit.make_engine()
    prompt = list(range(30))
    engine.add_request("r0", prompt, SamplingParams(max_tokens=3))
    kit.run_engine(engine)
    engine.add_request("r1", prompt, SamplingParams(max_tokens=3))
    first_step = len(runner.steps)
    results = kit.run_engine(engine)
    assert results["r1"].tokens == kit.reference(prompt, 3)
    assert results["r1"].final.num_cached_tokens == 28
    assert runner.steps[first_step] == [("r1", 28, 2)]  # only the tail was computed


def test_chunked_prefill_matches_reference(kit):
    engine, runner = kit.make_engine(max_num_batched_tokens=8, max_num_seqs=4)
    prompts = [list(range(1, 40)), [3, 1, 4], list(range(50, 75)), [2, 7]]
    submit(engine, prompts, max_tokens=8)
    results = kit.run_engine(engine)
    assert_matches_reference(kit, results, prompts, max_tokens=8)
    assert all(sum(n for _, _, n in step) <= 8 for step in runner.steps)
    long_chunks = [n for step in runner.steps for rid, _, n in step if rid == "r0" and n > 1]
    assert len(long_chunks) > 1  # the 39-token prompt was split


def test_step_shape_counters(kit):
    """A 20-token prompt arriving beside a running decode: 7 + 7 + 6 tokens, each chunk beside the decode row."""
    engine, runner = kit.make_engine(max_num_batched_tokens=8)
    engine.add_request("decode", [1, 2, 3], SamplingParams(max_tokens=10))
    engine.step()  # its prefill alone: not mixed
    engine.add_request("long", list(range(5, 25)), SamplingParams(max_tokens=1))
    kit.run_engine(engine)
    assert [n for step in runner.steps[1:4] for rid, _, n in step if rid == "long"] == [7, 7, 6]
    stats = engine.stats()
    assert (stats.num_steps, stats.num_mixed_steps, stats.num_partial_prefill_chunks) == (len(runner.steps), 3, 2)


def test_forced_preemption_matches_reference(kit):
    engine, _ = kit.make_engine(num_kv_blocks=10, max_num_seqs=4)
    prompts = prompts_with_shared_prefix(6, prefix_len=6, tail_len=3)
    submit(engine, prompts, max_tokens=12)
    results = kit.run_engine(engine)
    assert engine.stats().num_preemptions > 0
    assert_matches_reference(kit, results, prompts, max_tokens=12)


def test_seeded_sampling_sees_the_output_length_as_its_step(kit):
    engine, _ = kit.make_engine()
    engine.add_request("r0", [1, 2], SamplingParams(max_tokens=4))
    kit.run_engine(engine)
    assert engine.sampler.steps_seen == [[0], [1], [2], [3]]


def test_eos_stops_and_is_not_emitted_unless_ignored(kit):
    prompt = [9, 8, 7]
    expected = kit.reference(prompt, 20)
    eos = expected[3]
    engine, _ = kit.make_engine(eos_ids=(eos,))
    engine.add_request("stop", prompt, SamplingParams(max_tokens=20))
    engine.add_request("ignore", prompt, SamplingParams(max_tokens=20, ignore_eos=True))
    results = kit.run_engine(engine)
    cut = expected.index(eos)
    assert results["stop"].tokens == expected[:cut]
    assert results["stop"].final.finish_reason is FinishReason.STOP
    assert results["stop"].final.num_output_tokens == cut + 1
    assert results["ignore"].tokens == expected
    assert results["ignore"].final.finish_reason is FinishReason.LENGTH


def test_stop_token_ids_stop(kit):
    prompt = [4, 4, 4]
    expected = kit.reference(prompt, 20)
    stop = expected[2]
    engine, _ = kit.make_engine()
    engine.add_request("r0", prompt, SamplingParams(max_tokens=20, stop_token_ids=[stop]))
    results = kit.run_engine(engine)
    assert results["r0"].tokens == expected[: expected.index(stop)]
    assert results["r0"].final.finish_reason is FinishReason.STOP


def test_max_model_len_caps_generation(kit):
    engine, _ = kit.make_engine(max_model_len=10)
    prompt = list(range(7))
    engine.add_request("r0", prompt, SamplingParams(max_tokens=50))
    results = kit.run_engine(engine)
    assert results["r0"].tokens == kit.reference(prompt, 50, max_model_len=10)
    assert len(results["r0"].tokens) == 3
    assert results["r0"].final.finish_reason is FinishReason.LENGTH


def test_abort_and_finish_request_end_sequences_at_once(kit):
    engine, _ = kit.make_engine()
    submit(engine, [[1, 2, 3], [4, 5, 6], [7, 8, 9]], max_tokens=20)
    engine.step()
    engine.abort("r0")
    engine.finish_request("r1", FinishReason.STOP)  # e.g. the detokenizer saw a stop string
    engine.abort("unknown")
    engine.finish_request("unknown", FinishReason.STOP)
    assert engine.stats().num_running == 1
    results = kit.run_engine(engine)
    assert set(results) == {"r2"}  # the ended ones report nothing more
    assert len(results["r2"].tokens) == 19


def test_a_request_longer_than_the_pool_ends_at_the_clamped_length(kit):
    """It used to fail late (ERROR) mid-generation; max_model_len is now clamped to the pool (3 x 4 tokens)."""
    engine, _ = kit.make_engine(num_kv_blocks=3)
    engine.add_request("big", [1, 2, 3, 4], SamplingParams(max_tokens=30))
    engine.add_request("small", [5], SamplingParams(max_tokens=2))
    results = kit.run_engine(engine)
    assert results["big"].final.finish_reason is FinishReason.LENGTH
    assert results["big"].tokens == kit.reference([1, 2, 3, 4], 30, max_model_len=12)
    assert results["small"].tokens == kit.reference([5], 2)


def test_add_request_validates(kit):
    engine, _ = kit.make_engine(max_waiting=1, max_model_len=16)
    with pytest.raises(InvalidInput):
        engine.add_request("neg", [1, -2], SamplingParams())
    with pytest.raises(InvalidInput):
        engine.add_request("float", [1.5], SamplingParams())
    with pytest.raises(InvalidInput, match="limit is 15"):
        engine.add_request("long", list(range(16)), SamplingParams())
    engine.add_request("ok", [1], SamplingParams(max_tokens=1))
    with pytest.raises(Unavailable):
        engine.add_request("more", [1], SamplingParams())
    kit.run_engine(engine)


def test_stats_snapshot(kit):
    engine, _ = kit.make_engine()
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.kv_usage, stats.num_preemptions) == (0, 0, 0.0, 0)
    submit(engine, [list(range(10)), [1]])
    engine.step()
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting) == (2, 0)
    assert stats.kv_usage == pytest.approx(4 / 64)
    assert (stats.prompt_tokens_total, stats.generation_tokens_total) == (11, 2)


def test_block_count_comes_from_the_runner_or_the_config(kit):
    config = kit.make_config(num_kv_blocks=0)
    runner = kit.FakeRunner(num_kv_blocks=5, block_size=4)
    assert LLMEngine(config, runner, kit.ArgmaxSampler()).scheduler.kv.num_blocks == 5
    runner.num_kv_blocks = 0
    with pytest.raises(ValueError, match="KV blocks"):
        LLMEngine(config, runner, kit.ArgmaxSampler())


def test_a_sampler_that_returns_the_wrong_count_is_an_error(kit):
    engine, _ = kit.make_engine()
    engine.sampler.sample = lambda logits, seqs: []
    engine.add_request("r0", [1], SamplingParams())
    with pytest.raises(RuntimeError, match="sampler returned 0 tokens"):
        engine.step()
    engine.abort("r0")
    kit.check_all_free(engine.scheduler)


# ---- min_tokens and logprobs through the engine ------------------------------------------------
def real_sampler_engine(kit, eos_ids=()):
    """The real Sampler over the fake model: its rows are one-hot (1.0 at the fake's token, 0 elsewhere)."""
    config = kit.make_config()
    runner = kit.FakeRunner(config.num_kv_blocks, config.block_size)
    return LLMEngine(config, runner, Sampler(seed=0), eos_ids)


def test_min_tokens_keeps_eos_and_stop_ids_out_of_the_first_tokens(kit):
    prompt = [9, 8, 7]
    expected = kit.reference(prompt, 20)
    eos, stop = expected[0], expected[1]
    engine = real_sampler_engine(kit, eos_ids=(eos,))
    engine.add_request("plain", prompt, SamplingParams(max_tokens=20, stop_token_ids=[stop]))
    engine.add_request("min", prompt, SamplingParams(max_tokens=20, min_tokens=4, stop_token_ids=[stop]))
    results = kit.run_engine(engine)
    assert results["plain"].tokens == [] and results["plain"].final.num_output_tokens == 1  # EOS at once
    tokens = results["min"].tokens
    assert len(tokens) >= 4 and not {eos, stop} & set(tokens[:4])
    if results["min"].final.finish_reason is FinishReason.STOP:
        assert results["min"].final.num_output_tokens == len(tokens) + 1


def test_engine_does_not_stop_before_min_tokens_even_if_a_sampler_ignores_it(kit):
    """A sampler that does not mask (the fake argmax one) still cannot end a request early."""
    prompt = [9, 8, 7]
    expected = kit.reference(prompt, 20)
    engine, _ = kit.make_engine(eos_ids=(expected[1],))
    engine.add_request("r0", prompt, SamplingParams(max_tokens=20, min_tokens=3))
    results = kit.run_engine(engine)
    assert results["r0"].tokens[:3] == expected[:3]  # the EOS at position 2 did not stop it


def test_logprobs_and_cumulative_logprob_reach_the_step_outputs(kit):
    prompt = [4, 4, 4]
    expected = kit.reference(prompt, 6)
    eos = expected[4]
    engine = real_sampler_engine(kit, eos_ids=(eos,))
    engine.add_request("lp", prompt, SamplingParams(max_tokens=6, logprobs=2))
    engine.add_request("none", prompt, SamplingParams(max_tokens=6))
    outputs: dict[str, list] = {"lp": [], "none": []}
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id].append(out)
    lp = outputs["lp"]
    logprobs = [entry for out in lp for entry in out.logprobs]
    assert [entry.token_id for entry in logprobs] == expected[:5]  # the EOS that stopped it included
    assert [t for out in lp for t in out.new_token_ids] == expected[:4]  # its text is not
    one_hot = 1.0 - math.log(math.e + kit.VOCAB - 1)  # log_softmax of 1.0 among zeros
    assert all(entry.logprob == pytest.approx(one_hot, abs=1e-5) and entry.rank == 1 for entry in logprobs)
    assert all(len(entry.top) == 2 and entry.top[0][0] == entry.token_id for entry in logprobs)
    assert lp[-1].cumulative_logprob == pytest.approx(5 * one_hot, abs=1e-4)
    assert all(not out.logprobs and out.cumulative_logprob is None for out in outputs["none"])
    kit.check_all_free(engine.scheduler)


def test_max_model_len_is_clamped_to_the_kv_pool(kit):
    """A config whose max_model_len outgrows its KV pool (version 2's mistake) is clamped at load, with
    the reason: a sequence alone always fits, and a longer prompt is refused at once (InvalidInput)."""
    engine, _ = kit.make_engine(num_kv_blocks=8, block_size=4, max_model_len=64)
    assert engine.config.max_model_len == 32 and "32 tokens" in engine.clamp_reason
    with pytest.raises(InvalidInput, match="max_model_len 32"):
        engine.add_request("long", list(range(40)), SamplingParams(max_tokens=4))
    engine.add_request("fits", list(range(20)), SamplingParams(max_tokens=50))
    results = kit.run_engine(engine)
    assert len(results["fits"].tokens) == 12 and results["fits"].final.finish_reason is FinishReason.LENGTH
    assert kit.make_engine(num_kv_blocks=64, block_size=4, max_model_len=128)[0].clamp_reason is None
