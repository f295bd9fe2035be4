"""Sampler: greedy is argmax, top-k / top-p limits, seeds independent of the batch."""

from __future__ import annotations

import torch

from tritonrag.engine.sampler import Sampler
from tritonrag.engine.sequence import Sequence
from tritonrag.sampling import SamplingParams

V = 1000


def seq(request_id: str = "r", num_outputs: int = 0, **sampling) -> Sequence:
    s = Sequence(request_id, [1, 2, 3], SamplingParams(**sampling))
    s.output_token_ids = [7] * num_outputs
    return s


def random_logits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_with_torch_tie_breaking():
    logits = random_logits(4)
    logits[2, 10] = logits[2, 20] = logits[2].max() + 1  # a tie: torch.argmax takes the first
    assert Sampler().sample(logits, [seq() for _ in range(4)]) == logits.argmax(dim=-1).tolist()


def test_top_k_one_and_tiny_top_p_equal_greedy():
    logits = random_logits(6)
    greedy = logits.argmax(dim=-1).tolist()
    sampler = Sampler(seed=0)
    for _ in range(5):
        assert sampler.sample(logits, [seq(temperature=1.5, top_k=1) for _ in range(6)]) == greedy
        assert sampler.sample(logits, [seq(temperature=1.5, top_p=1e-6) for _ in range(6)]) == greedy


def test_sampled_tokens_stay_inside_top_k():
    logits = random_logits(1)
    allowed = set(logits[0].topk(5).indices.tolist())
    sampler = Sampler(seed=0)
    drawn = {sampler.sample(logits, [seq(temperature=5.0, top_k=5)])[0] for _ in range(200)}
    assert drawn <= allowed and len(drawn) > 1


def test_sampled_tokens_stay_inside_top_p_nucleus():
    logits = torch.full((1, V), -10.0)
    logits[0, :4] = torch.tensor([3.0, 2.0, 1.0, 0.0])  # probs ~ .64 .24 .09 .03
    sampler = Sampler(seed=0)
    drawn = {sampler.sample(logits, [seq(temperature=1.0, top_p=0.8)])[0] for _ in range(300)}
    assert drawn == {0, 1}


def test_same_seed_same_tokens_across_batch_compositions():
    logits = random_logits(5)
    target = seq("a", num_outputs=3, temperature=1.0, seed=1234)
    alone = Sampler().sample(logits[2:3], [target])[0]
    others = [seq(str(i), temperature=1.0) for i in range(4)]
    in_batch = Sampler().sample(logits, others[:2] + [target] + others[2:])[2]
    assert alone == in_batch
    # the step index enters the seed: the same request draws fresh noise at the next step
    draws = [Sampler().sample(logits[:1], [seq("a", num_outputs=n, temperature=1.0, seed=1234)])[0] for n in range(30)]
    assert len(set(draws)) > 1


def test_different_seeds_differ():
    logits = torch.zeros(1, V)  # uniform: any two seeds agree with p = 1/V
    a = [Sampler().sample(logits, [seq(num_outputs=n, temperature=1.0, seed=1)])[0] for n in range(5)]
    b = [Sampler().sample(logits, [seq(num_outputs=n, temperature=1.0, seed=2)])[0] for n in range(5)]
    assert a != b


def test_temperature_spreads_and_mixes_with_greedy_rows():
    logits = random_logits(2)
    sampler = Sampler(seed=0)
    rows = [seq("g"), seq("t", temperature=2.0)]
    out = [sampler.sample(logits, rows) for _ in range(100)]
    assert {o[0] for o in out} == {int(logits[0].argmax())}  # the greedy row never moves
    assert len({o[1] for o in out}) > 20  # the hot row spreads over many tokens
