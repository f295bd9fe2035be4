"""vLLM-style sampling with the real SmolLM2 weights, against Hugging Face.

- Processed logits: our sampler and HF's LogitsProcessors on the same real next-token
  logits (repetition penalty, min_p, min new tokens); presence / frequency penalties,
  which HF lacks, against a reference written here token by token.
- Greedy generation through the whole engine (paged cache, torch runner, fp32) equals
  HF `generate()` token for token with repetition_penalty, min_tokens (HF's
  min_new_tokens, real EOS) and presence / frequency penalties (HF with the reference
  as a custom LogitsProcessor).
- Logprobs: each generated token's logprob and its top 5 equal `log_softmax` of HF's raw
  logits within 1e-4; cumulative_logprob is their sum.
"""

from __future__ import annotations

import os

import pytest
import torch

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.runners.torch_runner import ModelRunner
from tritonrag.engine.sampler import Sampler
from tritonrag.engine.sequence import FinishReason, Sequence
from tritonrag.paths import generator_weights_dir
from tritonrag.sampling import SamplingParams

WEIGHTS = generator_weights_dir()
pytestmark = pytest.mark.skipif(
    not (WEIGHTS / "model.safetensors").exists(),
    reason=f"no generator weights in {WEIGHTS}: run `python build/prepare_weights.py`",
)
NEW_TOKENS = 12
TEXTS = [
    "The list of fruits: apple, banana, apple, banana,",
    "Count from one to ten: one, two,",
]
QUESTION = "Is the sky blue? Answer yes or no."  # SmolLM2 answers "No." and EOS


@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(WEIGHTS)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(WEIGHTS, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    config = EngineConfig(model_dir=str(WEIGHTS), block_size=16, num_kv_blocks=128, max_num_seqs=16, max_model_len=512)
    return ModelRunner(config)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(text)["input_ids"] for text in TEXTS]


@pytest.fixture(scope="module")
def chat_prompt(tokenizer) -> list[int]:
    messages = [{"role": "user", "content": QUESTION}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def serve(runner: ModelRunner, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list]:
    """Every request at once through one engine; per request its step outputs."""
    engine = LLMEngine(runner.config, runner, Sampler(seed=0), runner.eos_token_ids)
    for request_id, (prompt, sampling) in requests.items():
        engine.add_request(request_id, prompt, sampling)
    outputs: dict[str, list] = {request_id: [] for request_id in requests}
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id].append(out)
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks, "a finished request kept KV blocks"
    return outputs


def generated(outputs: list) -> list[int]:
    """The tokens the model generated, a stop token that ended the request included."""
    tokens = [t for out in outputs for t in out.new_token_ids]
    final = outputs[-1]
    if final.finish_reason is FinishReason.STOP:
        tokens.append(final.logprobs[-1].token_id if final.logprobs else -1)
    assert len(tokens) == final.num_output_tokens
    return tokens


def hf_generate(model, prompt: list[int], **kwargs) -> list[int]:
    config = model.generation_config
    kwargs.setdefault("eos_token_id", None)
    out = model.generate(
        torch.tensor([prompt]), generation_config=config, do_sample=False, max_new_tokens=NEW_TOKENS, **kwargs
    )
    return out[0, len(prompt) :].tolist()


class PresenceFrequency:
    """vLLM's presence / frequency penalties as an HF LogitsProcessor: over generated tokens only."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        outputs = input_ids[0, self.prompt_len :].tolist()
        for token in set(outputs):
            scores[0, token] -= self.frequency * outputs.count(token) + self.presence
        return scores


# ---- processed logits on real logits ---------------------------------------------------------
@pytest.fixture(scope="module")
def real_step(model, prompts) -> tuple[Sequence, torch.Tensor]:
    """A sequence with 12 output tokens (HF greedy) and the model's real next-token logits."""
    prompt = prompts[0]
    full = prompt + hf_generate(model, prompt)[:12]
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0, -1].float()
    s = Sequence("real", prompt, SamplingParams(), eos_token_ids=frozenset({2}))
    s.output_token_ids = full[len(prompt) :]
    return s, logits


def with_sampling(s: Sequence, **sampling) -> Sequence:
    out = Sequence(s.request_id, s.prompt_token_ids, SamplingParams(**sampling), eos_token_ids=s.eos_token_ids)
    out.output_token_ids = list(s.output_token_ids)
    return out


def run_hf(processor, s: Sequence, logits: torch.Tensor) -> torch.Tensor:
    return processor(torch.tensor([s.all_token_ids]), logits[None, :].clone())[0]


def test_processors_equal_hf_on_real_logits(real_step):
    from transformers import MinNewTokensLengthLogitsProcessor, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor

    s, logits = real_step
    ours = Sampler.process(logits[None, :], [with_sampling(s, repetition_penalty=1.3)])[0]
    assert torch.equal(ours, run_hf(RepetitionPenaltyLogitsProcessor(1.3), s, logits))

    ours = Sampler.process(logits[None, :], [with_sampling(s, temperature=1.0, min_p=0.05)])[0]
    expected = run_hf(MinPLogitsWarper(0.05), s, logits)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected)) and 1 < int((~torch.isinf(ours)).sum()) < len(ours)
    torch.testing.assert_close(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)])

    ours = Sampler.process(logits[None, :], [with_sampling(s, min_tokens=20, max_tokens=32)])[0]
    expected = run_hf(MinNewTokensLengthLogitsProcessor(len(s.prompt_token_ids), 20, [2]), s, logits)
    assert torch.equal(ours, expected) and torch.isinf(ours[2])

    ours = Sampler.process(logits[None, :], [with_sampling(s, presence_penalty=0.8, frequency_penalty=0.6)])[0]
    expected = PresenceFrequency(len(s.prompt_token_ids), 0.8, 0.6)(torch.tensor([s.all_token_ids]), logits[None, :])
    torch.testing.assert_close(ours, expected[0], rtol=0, atol=1e-6)


# ---- greedy generation through the engine ----------------------------------------------------
def cases(prompts: list[list[int]], chat_prompt: list[int]) -> dict[str, tuple[list[int], SamplingParams]]:
    """Every request of the engine run: each sampling setting on each prompt, all in one batch."""
    plain = dict(max_tokens=NEW_TOKENS, ignore_eos=True)
    out = {}
    for index, prompt in enumerate(prompts):
        out[f"repetition{index}"] = (prompt, SamplingParams(**plain, repetition_penalty=1.3))
        out[f"presence{index}"] = (prompt, SamplingParams(**plain, presence_penalty=0.7, frequency_penalty=0.5))
        out[f"logprobs{index}"] = (prompt, SamplingParams(**plain, logprobs=5))
    out["min_tokens"] = (chat_prompt, SamplingParams(max_tokens=NEW_TOKENS, min_tokens=6, logprobs=0))
    out["eos"] = (chat_prompt, SamplingParams(max_tokens=NEW_TOKENS, logprobs=0))
    return out


@pytest.fixture(scope="module")
def served(runner, prompts, chat_prompt) -> dict[str, list]:
    """One engine run over every case at once: penalties of one row must not leak into another."""
    return serve(runner, cases(prompts, chat_prompt))


def test_repetition_penalty_greedy_equals_hf(model, served, prompts):
    for index, prompt in enumerate(prompts):
        expected = hf_generate(model, prompt, repetition_penalty=1.3)
        assert generated(served[f"repetition{index}"]) == expected, TEXTS[index]


def test_presence_and_frequency_greedy_equal_reference(model, served, prompts):
    from transformers import LogitsProcessorList

    for index, prompt in enumerate(prompts):
        processor = LogitsProcessorList([PresenceFrequency(len(prompt), 0.7, 0.5)])
        assert generated(served[f"presence{index}"]) == hf_generate(model, prompt, logits_processor=processor)


def test_min_tokens_with_real_eos_equals_hf(model, runner, served, chat_prompt):
    eos = runner.eos_token_ids
    early = hf_generate(model, chat_prompt, eos_token_id=eos)
    assert early[-1] in eos and len(early) < 6, f"the model was expected to answer and stop early: {early}"
    assert generated(served["eos"]) == early and served["eos"][-1].finish_reason is FinishReason.STOP
    expected = hf_generate(model, chat_prompt, eos_token_id=eos, min_new_tokens=6)
    assert generated(served["min_tokens"]) == expected
    assert not set(expected[:6]) & set(eos) and expected != early


# ---- logprobs -------------------------------------------------------------------------------
def test_logprobs_equal_hf_log_softmax(model, served, prompts):
    for index, prompt in enumerate(prompts):
        hf_out = model.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            eos_token_id=None,
            output_logits=True,
            return_dict_in_generate=True,
        )
        hf_tokens = hf_out.sequences[0, len(prompt) :].tolist()
        hf_logprobs = torch.cat(hf_out.logits).float().log_softmax(dim=-1)  # [NEW_TOKENS, V], raw logits
        entries = [entry for out in served[f"logprobs{index}"] for entry in out.logprobs]
        assert [entry.token_id for entry in entries] == hf_tokens
        for step, entry in enumerate(entries):
            assert entry.logprob == pytest.approx(hf_logprobs[step, entry.token_id].item(), abs=1e-4)
            assert entry.rank == 1  # greedy
            top_values, top_ids = hf_logprobs[step].topk(5)
            assert [t for t, _ in entry.top] == top_ids.tolist()
            assert [v for _, v in entry.top] == pytest.approx(top_values.tolist(), abs=1e-4)
        cumulative = served[f"logprobs{index}"][-1].cumulative_logprob
        assert cumulative == pytest.approx(sum(hf_logprobs[i, t].item() for i, t in enumerate(hf_tokens)), abs=1e-3)
