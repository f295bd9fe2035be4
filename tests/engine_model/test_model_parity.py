"""Our Llama over the paged KV cache against Hugging Face's LlamaForCausalLM, real weights."""

from __future__ import annotations

import os
import random

import pytest
import torch

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.runners.torch_runner import ModelRunner
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput, Sequence
from tritonrag.paths import generator_weights_dir
from tritonrag.sampling import SamplingParams

WEIGHTS = generator_weights_dir()
pytestmark = pytest.mark.skipif(
    not (WEIGHTS / "model.safetensors").exists(),
    reason=f"no generator weights in {WEIGHTS}: run `python build/prepare_weights.py`",
)

LOGITS_ATOL = 2e-4  # fp32; observed max |diff| ~4e-5 on logits of magnitude ~20
BLOCK_SIZE = 4  # small blocks: every sequence spans many, non-contiguous ones
NEW_TOKENS = 20
QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three primary colors and explain briefly why they are called primary.",
]


@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(WEIGHTS)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    encoded = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True) for c in chats
    ]
    return [e["input_ids"] for e in encoded]


@pytest.fixture(scope="module")
def hf_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(WEIGHTS, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner(EngineConfig(model_dir=str(WEIGHTS), block_size=BLOCK_SIZE, num_kv_blocks=256))


@pytest.fixture(scope="module")
def hf_greedy(hf_model, prompts) -> list[list[int]]:
    outs = []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            y = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False)
            outs.append(y[0, len(ids) :].tolist())
    return outs


class TinyAllocator:
    """Hands out blocks from a shuffled free list, so block tables are not contiguous."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.free = list(range(num_blocks))
        random.Random(0).shuffle(self.free)
        self.block_size = block_size

    def cover(self, seq: Sequence, num_tokens: int) -> None:
        while len(seq.block_table) * self.block_size < num_tokens:
            seq.block_table.append(self.free.pop())


def run_step(runner: ModelRunner, alloc: TinyAllocator, plan: list[tuple[Sequence, int]]) -> None:
    """One engine step as the scheduler would drive it: allocate, execute, sample greedily, advance."""
    chunks = [ScheduledChunk(seq, n) for seq, n in plan]
    for chunk in chunks:
        alloc.cover(chunk.seq, chunk.end)
    logits = runner.execute(SchedulerOutput(chunks))
    sampling = [c for c in chunks if c.samples]
    assert logits.shape == (len(sampling), runner.vocab_size) and logits.dtype == torch.float32
    for chunk in chunks:
        chunk.seq.num_computed_tokens = chunk.end
    for chunk, token in zip(sampling, logits.argmax(dim=-1).tolist()):
        chunk.seq.output_token_ids.append(token)


def greedy_generate(runner: ModelRunner, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Prompt 0 prefills alone; prompt 1 prefills in two chunks beside prompt 0's decodes;
    prompt 2 joins at the second step; then all three decode together."""
    alloc = TinyAllocator(runner.num_kv_blocks, runner.block_size)
    a, b, c = (Sequence(str(i), list(p), SamplingParams()) for i, p in enumerate(prompts))
    half = len(b.prompt_token_ids) // 2
    run_step(runner, alloc, [(a, a.num_prompt_tokens), (b, half)])
    # the decode is listed between prefill chunks: the runner packs it first, logits keep chunk order
    run_step(runner, alloc, [(b, b.num_prompt_tokens - half), (a, 1), (c, c.num_prompt_tokens)])
    seqs = [a, b, c]
    while any(len(s.output_token_ids) < new_tokens for s in seqs):
        run_step(runner, alloc, [(s, 1) for s in seqs if len(s.output_token_ids) < new_tokens])
    return [s.output_token_ids for s in seqs]


def test_packed_prefill_matches_hf_last_token_logits(runner, hf_model, prompts):
    alloc = TinyAllocator(runner.num_kv_blocks, runner.block_size)
    seqs = [Sequence(str(i), list(p), SamplingParams()) for i, p in enumerate(prompts)]
    chunks = [ScheduledChunk(s, s.num_prompt_tokens) for s in seqs]
    for chunk in chunks:
        alloc.cover(chunk.seq, chunk.end)
    logits = runner.execute(SchedulerOutput(chunks))  # one forward, three prompts
    assert logits.shape == (3, runner.vocab_size)
    with torch.inference_mode():
        for i, ids in enumerate(prompts):
            ref = hf_model(torch.tensor([ids])).logits[0, -1].float()
            torch.testing.assert_close(logits[i], ref, atol=LOGITS_ATOL, rtol=0)


def test_chunk_starting_mid_sequence_matches_hf(runner, hf_model, prompts):
    """A chunk after cached context (chunked prefill, prefix hit) sees that context causally."""
    ids = prompts[2]
    alloc = TinyAllocator(runner.num_kv_blocks, runner.block_size)
    seq = Sequence("s", list(ids), SamplingParams())
    cut = len(ids) - 7
    run_step(runner, alloc, [(seq, cut)])  # no logits: does not reach the end
    chunk = ScheduledChunk(seq, len(ids) - cut)
    alloc.cover(seq, chunk.end)
    logits = runner.execute(SchedulerOutput([chunk]))
    with torch.inference_mode():
        ref = hf_model(torch.tensor([ids])).logits[0, -1].float()
    torch.testing.assert_close(logits[0], ref, atol=LOGITS_ATOL, rtol=0)


def test_greedy_decode_loop_matches_hf_generate(runner, prompts, hf_greedy):
    ours = greedy_generate(runner, prompts, NEW_TOKENS)
    for i, (got, want) in enumerate(zip(ours, hf_greedy)):
        # HF stops early at EOS; we always run NEW_TOKENS steps
        assert got[: len(want)] == want, f"prompt {i}: ours {got} != HF {want}"


def test_bfloat16_runs_and_reports_agreement(prompts, hf_greedy):
    runner = ModelRunner(
        EngineConfig(model_dir=str(WEIGHTS), dtype="bfloat16", block_size=BLOCK_SIZE, num_kv_blocks=256)
    )
    ours = greedy_generate(runner, prompts, NEW_TOKENS)
    for i, (got, want) in enumerate(zip(ours, hf_greedy)):
        n = len(want)
        agree = next((k for k in range(n) if got[k] != want[k]), n)
        print(f"bf16 prompt {i}: first {agree}/{n} greedy tokens equal fp32 HF")
        assert len(got) == NEW_TOKENS and all(0 <= t < runner.vocab_size for t in got)


def test_kv_cache_is_sized_from_memory_budget():
    runner = ModelRunner(EngineConfig(model_dir=str(WEIGHTS), kv_cache_memory_bytes=64 * 2**20))
    # 2 (K, V) * 30 layers * 16 tokens * 3 KV heads * 64 dims * 4 bytes
    assert runner.bytes_per_block == 2 * 30 * 16 * 3 * 64 * 4
    assert runner.num_kv_blocks == 64 * 2**20 // runner.bytes_per_block
    assert runner.eos_token_ids == [2]
