"""Sampler: greedy is argmax, top-k / top-p / min_p limits, penalties, min_tokens, raw logprobs, batch-independent seeds.

Where Hugging Face has the same logits processor (repetition penalty, min_p, min new
tokens, temperature, top-k, top-p), our processed logits are compared with HF's on the
same logits; presence and frequency penalties (no HF processor) against a reference
computed here token by token.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tritonrag.engine.sampler import Sampler
from tritonrag.engine.sequence import Sequence
from tritonrag.sampling import SamplingParams

V = 1000
PROMPT = [1, 2, 3, 50, 50]
EOS = 999


def seq(request_id: str = "r", num_outputs: int = 0, outputs: list[int] | None = None, **sampling) -> Sequence:
    s = Sequence(request_id, list(PROMPT), SamplingParams(**sampling), eos_token_ids=frozenset({EOS}))
    s.output_token_ids = list(outputs) if outputs is not None else [7] * num_outputs
    return s


def ids(sampler: Sampler, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    return [t.token_id for t in sampler.sample(logits, seqs)]


def random_logits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def hf(processor, s: Sequence, row: torch.Tensor) -> torch.Tensor:
    """HF's processor on one row, with the sequence's prompt + output as input_ids."""
    return processor(torch.tensor([s.all_token_ids]), row[None, :].clone())[0]


# ---- greedy, top-k, top-p, seeds (unchanged behaviour) -------------------------------------
def test_greedy_is_argmax_with_torch_tie_breaking():
    logits = random_logits(4)
    logits[2, 10] = logits[2, 20] = logits[2].max() + 1  # a tie: torch.argmax takes the first
    assert ids(Sampler(), logits, [seq() for _ in range(4)]) == logits.argmax(dim=-1).tolist()


def test_top_k_one_and_tiny_top_p_equal_greedy():
    logits = random_logits(6)
    greedy = logits.argmax(dim=-1).tolist()
    sampler = Sampler(seed=0)
    for _ in range(5):
        assert ids(sampler, logits, [seq(temperature=1.5, top_k=1) for _ in range(6)]) == greedy
        assert ids(sampler, logits, [seq(temperature=1.5, top_p=1e-6) for _ in range(6)]) == greedy


def test_sampled_tokens_stay_inside_top_k():
    logits = random_logits(1)
    allowed = set(logits[0].topk(5).indices.tolist())
    sampler = Sampler(seed=0)
    drawn = {ids(sampler, logits, [seq(temperature=5.0, top_k=5)])[0] for _ in range(200)}
    assert drawn <= allowed and len(drawn) > 1


def test_sampled_tokens_stay_inside_top_p_nucleus():
    logits = torch.full((1, V), -10.0)
    logits[0, :4] = torch.tensor([3.0, 2.0, 1.0, 0.0])  # probs ~ .64 .24 .09 .03
    sampler = Sampler(seed=0)
    drawn = {ids(sampler, logits, [seq(temperature=1.0, top_p=0.8)])[0] for _ in range(300)}
    assert drawn == {0, 1}


def test_sampled_tokens_stay_inside_min_p():
    logits = torch.full((1, V), -10.0)
    logits[0, :4] = torch.tensor([3.0, 2.5, 1.0, 0.0])  # p ratios to the top: 1, .61, .14, .05
    sampler = Sampler(seed=0)
    drawn = {ids(sampler, logits, [seq(temperature=1.0, min_p=0.3)])[0] for _ in range(300)}
    assert drawn == {0, 1}


def test_same_seed_same_tokens_across_batch_compositions():
    logits = random_logits(5)
    target = seq("a", num_outputs=3, temperature=1.0, seed=1234)
    alone = ids(Sampler(), logits[2:3], [target])[0]
    others = [seq(str(i), temperature=1.0, repetition_penalty=1.5 if i % 2 else 1.0) for i in range(4)]
    in_batch = ids(Sampler(), logits, others[:2] + [target] + others[2:])[2]
    assert alone == in_batch
    # the step index enters the seed: the same request draws fresh noise at the next step
    draws = [ids(Sampler(), logits[:1], [seq("a", num_outputs=n, temperature=1.0, seed=1234)])[0] for n in range(30)]
    assert len(set(draws)) > 1


def test_different_seeds_differ():
    logits = torch.zeros(1, V)  # uniform: any two seeds agree with p = 1/V
    a = [ids(Sampler(), logits, [seq(num_outputs=n, temperature=1.0, seed=1)])[0] for n in range(5)]
    b = [ids(Sampler(), logits, [seq(num_outputs=n, temperature=1.0, seed=2)])[0] for n in range(5)]
    assert a != b


def test_temperature_spreads_and_mixes_with_greedy_rows():
    logits = random_logits(2)
    sampler = Sampler(seed=0)
    rows = [seq("g"), seq("t", temperature=2.0)]
    out = [ids(sampler, logits, rows) for _ in range(100)]
    assert {o[0] for o in out} == {int(logits[0].argmax())}  # the greedy row never moves
    assert len({o[1] for o in out}) > 20  # the hot row spreads over many tokens


# ---- processed logits against Hugging Face's processors --------------------------------------
@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    logits = random_logits(3, seed=1)
    logits[:, 50] = 0.0  # a seen token at exactly 0 stays 0 both ways
    seqs = [seq(str(i), outputs=[4, 4, 9, 700 + i], repetition_penalty=penalty) for i in range(3)]
    processed = Sampler.process(logits, seqs)
    for i, s in enumerate(seqs):
        assert torch.equal(processed[i], hf(RepetitionPenaltyLogitsProcessor(penalty), s, logits[i]))


@pytest.mark.parametrize("min_p, temperature", [(0.05, 1.0), (0.2, 1.0), (0.1, 0.7), (1.0, 1.0)])
def test_min_p_equals_hf(min_p, temperature):
    logits = random_logits(2, seed=2)
    seqs = [seq(str(i), temperature=temperature, min_p=min_p) for i in range(2)]
    processed = Sampler.process(logits, seqs)
    for i, s in enumerate(seqs):
        expected = hf(MinPLogitsWarper(min_p), s, hf(TemperatureLogitsWarper(temperature), s, logits[i]))
        assert torch.equal(torch.isinf(processed[i]), torch.isinf(expected))
        kept = ~torch.isinf(expected)
        torch.testing.assert_close(processed[i][kept], expected[kept])
        assert 0 < int(kept.sum()) < V


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.9), (50, 0.7)])
def test_top_k_top_p_equal_hf(top_k, top_p):
    logits = random_logits(2, seed=3)
    s = seq(temperature=0.8, top_k=top_k, top_p=top_p)
    expected = hf(TemperatureLogitsWarper(0.8), s, logits[0])
    if top_k:
        expected = hf(TopKLogitsWarper(top_k), s, expected)
    if top_p < 1:
        expected = hf(TopPLogitsWarper(top_p), s, expected)
    processed = Sampler.process(logits[:1], [s])[0]
    assert torch.equal(torch.isinf(processed), torch.isinf(expected))
    torch.testing.assert_close(processed[~torch.isinf(expected)], expected[~torch.isinf(expected)])


@pytest.mark.parametrize("num_outputs", [0, 2, 3, 4])
def test_min_tokens_equals_hf(num_outputs):
    """EOS and stop token ids are -inf while fewer than min_tokens tokens are out; then untouched."""
    logits = random_logits(1, seed=4)
    s = seq(num_outputs=num_outputs, min_tokens=3, stop_token_ids=[11, 12])
    processor = MinNewTokensLengthLogitsProcessor(len(PROMPT), 3, [EOS, 11, 12])
    expected = hf(processor, s, logits[0])
    processed = Sampler.process(logits, [s])[0]
    assert torch.equal(processed, expected)
    assert torch.isinf(processed[EOS]).item() == (num_outputs < 3)


def test_min_tokens_leaves_eos_alone_with_ignore_eos():
    logits = random_logits(1, seed=4)
    processed = Sampler.process(logits, [seq(min_tokens=3, ignore_eos=True, stop_token_ids=[11])])[0]
    assert processed[EOS] == logits[0, EOS] and torch.isinf(processed[11])


def test_min_tokens_blocks_eos_even_when_it_is_the_argmax():
    logits = random_logits(2, seed=5)
    logits[:, EOS] = 100.0
    sampler = Sampler(seed=0)
    assert ids(sampler, logits, [seq(min_tokens=1), seq(min_tokens=1, temperature=1.0)]) != [EOS, EOS]
    assert EOS not in ids(sampler, logits, [seq(min_tokens=1), seq(min_tokens=1, temperature=1.0)])
    assert ids(sampler, logits, [seq(num_outputs=1, min_tokens=1)]) == [EOS]


def reference_penalties(row: torch.Tensor, s: Sequence) -> torch.Tensor:
    """vLLM's presence / frequency penalties, token by token over the distinct output tokens."""
    out = row.clone()
    p = s.sampling
    for token in set(s.output_token_ids):
        out[token] -= p.frequency_penalty * s.output_token_ids.count(token) + p.presence_penalty
    return out


@pytest.mark.parametrize("presence, frequency", [(0.5, 0.0), (0.0, 0.7), (1.5, -0.4), (-2.0, 2.0)])
def test_presence_and_frequency_penalties_equal_reference(presence, frequency):
    logits = random_logits(2, seed=6)
    outputs = [[5, 5, 5, 9, 300], [300, 1, 1]]  # token 50 is only in the prompt: untouched
    seqs = [
        seq(str(i), outputs=o, presence_penalty=presence, frequency_penalty=frequency) for i, o in enumerate(outputs)
    ]
    processed = Sampler.process(logits, seqs)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(processed[i], reference_penalties(logits[i], s), rtol=0, atol=1e-6)
        assert processed[i, 50] == logits[i, 50]


def test_all_penalties_compose_in_vllm_order():
    """Repetition first (prompt + output), then frequency and presence (output only)."""
    logits = random_logits(1, seed=7)
    s = seq(outputs=[5, 5, 8], repetition_penalty=1.4, presence_penalty=0.3, frequency_penalty=0.2)
    expected = reference_penalties(hf(RepetitionPenaltyLogitsProcessor(1.4), s, logits[0]), s)
    torch.testing.assert_close(Sampler.process(logits, [s])[0], expected, rtol=0, atol=1e-6)


def test_greedy_follows_the_penalised_logits():
    logits = torch.zeros(1, V)
    logits[0, 5], logits[0, 6] = 2.0, 1.5
    assert ids(Sampler(), logits, [seq(outputs=[5])]) == [5]
    assert ids(Sampler(), logits, [seq(outputs=[5], repetition_penalty=2.0)]) == [6]
    assert ids(Sampler(), logits, [seq(outputs=[5], presence_penalty=1.0)]) == [6]


def test_rows_without_work_are_untouched_and_a_plain_batch_is_not_copied():
    logits = random_logits(3, seed=8)
    plain = [seq("a"), seq("b"), seq("c", num_outputs=5, min_tokens=2)]  # min_tokens already reached
    assert Sampler.process(logits, plain) is logits  # nothing to do: not even a copy
    mixed = [seq("a"), seq("b", outputs=[3, 3], frequency_penalty=1.0), seq("c")]
    processed = Sampler.process(logits, mixed)
    assert torch.equal(processed[0], logits[0]) and torch.equal(processed[2], logits[2])
    assert not torch.equal(processed[1], logits[1])
    assert torch.equal(logits, random_logits(3, seed=8)), "the runner's logits must not be modified"


def test_half_precision_logits_are_processed_in_fp32():
    logits = random_logits(2, seed=9).to(torch.bfloat16)
    seqs = [seq(repetition_penalty=1.2), seq(temperature=0.5, logprobs=1)]
    assert Sampler.process(logits, seqs).dtype == torch.float32
    out = Sampler(seed=0).sample(logits, seqs)
    expected = logits.float().log_softmax(dim=-1)[1, out[1].token_id].item()
    assert out[1].logprobs is not None and out[1].logprobs.logprob == pytest.approx(expected, abs=1e-6)


# ---- logprobs -------------------------------------------------------------------------------
def test_logprobs_are_raw_log_softmax_with_rank_and_top_n():
    logits = random_logits(3, seed=10)
    seqs = [
        seq("greedy", logprobs=3),
        seq("hot", temperature=1.5, repetition_penalty=1.5, outputs=[int(logits[1].argmax())], logprobs=5, seed=1),
        seq("none"),
    ]
    out = Sampler(seed=0).sample(logits, seqs)
    raw = logits.log_softmax(dim=-1)
    assert out[2].logprobs is None
    for i, n in ((0, 3), (1, 5)):
        lp = out[i].logprobs
        assert lp is not None and lp.token_id == out[i].token_id
        assert lp.logprob == pytest.approx(raw[i, lp.token_id].item(), abs=1e-6)  # raw: before penalties
        assert lp.rank == 1 + int((raw[i] > raw[i, lp.token_id]).sum())
        top_values, top_ids = raw[i].topk(n)
        assert [t for t, _ in lp.top] == top_ids.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top_values.tolist(), abs=1e-6)
    assert out[0].logprobs.rank == 1  # greedy takes the most likely token


def test_logprobs_zero_gives_only_the_sampled_token():
    out = Sampler().sample(random_logits(1), [seq(logprobs=0)])
    assert out[0].logprobs is not None and out[0].logprobs.top == () and out[0].logprobs.rank == 1


def test_numpy_logits_are_accepted():
    logits = random_logits(2, seed=11)
    assert ids(Sampler(), logits.numpy(), [seq(), seq()]) == logits.argmax(dim=-1).tolist()
