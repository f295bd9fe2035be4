"""The whole engine on CUDA against Hugging Face greedy generate() on CUDA: token for token, blocks freed.

GPU-only (`make gpu-check`); skipped without a CUDA GPU. On CUDA the torch runner must not use the paged
decode attention op (a CPU-only C++ op): decode gathers keys and values and runs torch's SDPA instead
(FlashInfer is not wired in). fp32 on both sides, TF32 off (torch's default for matmul).
"""

from __future__ import annotations

import pytest
import torch
from test_engine_parity import NEW_TOKENS, WEIGHTS, assert_all_blocks_free, config, prompts, serve  # noqa: F401
from test_engine_parity import pytestmark as needs_weights

from tritonrag.engine.runners import paged_attention

pytestmark = needs_weights


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
