"""The whole engine on CUDA against Hugging Face greedy generate() on CUDA: token for token, blocks freed.

GPU-only (`make gpu-check`); skipped without a CUDA GPU. On CUDA the torch runner must not use the paged
decode attention op (a CPU-only C++ op): decode gathers keys and values and runs torch's SDPA instead
(FlashInfer is not wired in). fp32 on both sides, TF32 off (torch's default for matmul).

bfloat16 cannot be compared token for token (a near-tie flips), so its check is on logits: with the prompts
and HF's fp32 greedy tokens fed in (prefill, then one decode step per token), the engine's bf16 logits must be
about as close to HF's fp32 logits as HF's own bf16 model is: no further than BF16_ERROR_RATIO times HF bf16's
error, mean and max. On a bare GPU host (`build/gpu_check.py --bare`) the weights are random with the real
config and tokenizer (build/random_weights.py, seeded so that HF's greedy margins clear 1e-3).
"""

from __future__ import annotations

import pytest
import torch

# prompts and tokenizer are fixtures: a fixture's own fixtures must be importable from here too
from test_engine_parity import (  # noqa: F401
    NEW_TOKENS,
    WEIGHTS,
    assert_all_blocks_free,
    config,
    prompts,
    serve,
    tokenizer,
)
from test_engine_parity import pytestmark as needs_weights

from tritonrag.engine.runners import paged_attention
from tritonrag.engine.runners.torch_runner import ModelRunner
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput, Sequence
from tritonrag.sampling import SamplingParams

pytestmark = needs_weights
BF16_ERROR_RATIO = 2.0  # our bf16 logits vs HF fp32, at most this many times HF bf16's own distance to HF fp32


def on_cuda(test):
    """GPU-only: marked gpu (make gpu-check selects these), skipped without a CUDA GPU."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(scope="module")
def expected_on_cuda(prompts) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(WEIGHTS, dtype=torch.float32).to("cuda").eval()
    settings = model.generation_config
    settings.eos_token_id = None
    outputs = [
        model.generate(
            torch.tensor([ids], device="cuda"),
            generation_config=settings,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )[0, len(ids) :].tolist()
        for ids in prompts
    ]
    del model
    torch.cuda.empty_cache()
    return outputs


def test_cpu_only_decode_op_is_never_offered_for_cuda():
    """Runs anywhere: the torch runner asks kernel_supports before it loads the op."""
    assert not paged_attention.kernel_supports(64, "cuda")
    assert not paged_attention.kernel_supports(64, torch.device("cuda", 0))


@on_cuda
def test_engine_on_cuda_gives_hf_greedy_tokens(prompts, expected_on_cuda):
    engine, outputs = serve(config(device="cuda"), prompts)
    assert engine.runner.device.type == "cuda" and engine.runner.paged_decode is False
    assert all(layer[0].is_cuda for layer in engine.runner.kv_cache)
    for index, tokens in enumerate(expected_on_cuda):
        assert outputs[str(index)] == tokens, f"prompt {index} differs from HF on CUDA"
    assert_all_blocks_free(engine)


@on_cuda
def test_chunked_prefill_and_prefix_cache_on_cuda(prompts, expected_on_cuda):
    engine, outputs = serve(config(device="cuda", block_size=8, max_num_batched_tokens=48, max_num_seqs=2), prompts)
    assert [outputs[str(i)] for i in range(len(prompts))] == expected_on_cuda
    assert engine.stats().prefix_cache_hits > 0
    assert_all_blocks_free(engine)


def hf_logits(sequences: list[list[int]], prompts: list[list[int]], dtype: torch.dtype, device: str) -> list:
    """HF's logits [NEW_TOKENS, vocab] (fp32) for each prompt's continuation, in `dtype`, one sequence at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(WEIGHTS, dtype=dtype).to(device).eval()
    with torch.inference_mode():
        rows = [
            model(torch.tensor([s], device=device)).logits[0, len(p) - 1 : len(s) - 1].float()
            for s, p in zip(sequences, prompts)
        ]
    del model
    return rows


def teacher_forced_logits(runner: ModelRunner, prompts: list[list[int]], continuations: list[list[int]]) -> list:
    """The engine runner's logits [len(continuation), vocab] per prompt: every prompt prefilled in one packed
    step, then one batched decode step per continuation token, fed the given tokens instead of its own."""
    per_seq = -(-max(len(p) + len(c) for p, c in zip(prompts, continuations)) // runner.block_size)
    seqs = [Sequence(str(i), list(p), SamplingParams()) for i, p in enumerate(prompts)]
    for index, seq in enumerate(seqs):
        seq.block_table.extend(range(index * per_seq, (index + 1) * per_seq))
    chunks = [ScheduledChunk(seq, seq.num_prompt_tokens) for seq in seqs]
    rows: list[list[torch.Tensor]] = [[] for _ in seqs]
    for step in range(len(continuations[0])):
        logits = runner.execute(SchedulerOutput(chunks))
        for index, chunk in enumerate(chunks):
            rows[index].append(logits[index])
            chunk.seq.num_computed_tokens = chunk.end
            chunk.seq.output_token_ids.append(continuations[index][step])
        chunks = [ScheduledChunk(seq, 1) for seq in seqs]
    return [torch.stack(r).to("cpu") for r in rows]


def bf16_errors(prompts, continuations, device: str) -> list[dict]:
    """Per prompt: the mean and max |logit - HF fp32 logit| of our bf16 runner and of HF's bf16 model."""
    sequences = [p + c for p, c in zip(prompts, continuations)]
    truth = hf_logits(sequences, prompts, torch.float32, device)
    theirs = hf_logits(sequences, prompts, torch.bfloat16, device)
    runner = ModelRunner(config(device=device, dtype="bfloat16"))
    ours = teacher_forced_logits(runner, prompts, continuations)
    errors = []
    for want, got, ref in zip(truth, ours, theirs):
        want = want.to("cpu")
        ours_diff, hf_diff = (got - want).abs(), (ref.to("cpu") - want).abs()
        errors.append(
            {
                "ours_mean": ours_diff.mean().item(),
                "ours_max": ours_diff.max().item(),
                "hf_mean": hf_diff.mean().item(),
                "hf_max": hf_diff.max().item(),
            }
        )
    return errors


@on_cuda
def test_bfloat16_on_cuda_logits_are_as_close_to_fp32_as_hf_bf16(prompts, expected_on_cuda):
    errors = bf16_errors(prompts, expected_on_cuda, "cuda")
    for index, e in enumerate(errors):
        print(f"bf16 prompt {index}: " + ", ".join(f"{k} {v:.4f}" for k, v in e.items()))
        assert e["ours_mean"] <= BF16_ERROR_RATIO * e["hf_mean"], f"prompt {index}: mean logit error {e}"
        assert e["ours_max"] <= BF16_ERROR_RATIO * e["hf_max"], f"prompt {index}: max logit error {e}"


@on_cuda
def test_bfloat16_engine_on_cuda_serves_and_frees_every_block(prompts, expected_on_cuda):
    engine, outputs = serve(config(device="cuda", dtype="bfloat16", block_size=8, max_num_batched_tokens=48), prompts)
    assert engine.runner.dtype == torch.bfloat16 and engine.runner.kv_cache.dtype == torch.bfloat16
    assert engine.runner.kv_cache.is_cuda
    for index, want in enumerate(expected_on_cuda):
        got = outputs[str(index)]
        assert len(got) == NEW_TOKENS and all(0 <= t < engine.runner.vocab_size for t in got)
        agree = next((k for k in range(NEW_TOKENS) if got[k] != want[k]), NEW_TOKENS)
        print(f"bf16 prompt {index}: first {agree}/{NEW_TOKENS} greedy tokens equal fp32 HF on CUDA")
    assert_all_blocks_free(engine)
