"""The whole engine (scheduler + paged cache + runner + sampler) against Hugging Face greedy generate().

Each scenario serves a mix of prompts concurrently and must give token-for-token the
same output as HF on each prompt alone, then leave every block back in the pool.
"""

from __future__ import annotations

import os

import pytest
import torch

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.runners.torch_runner import ModelRunner
from tritonrag.engine.sampler import Sampler
from tritonrag.paths import generator_weights_dir
from tritonrag.sampling import SamplingParams

WEIGHTS = generator_weights_dir()
pytestmark = pytest.mark.skipif(
    not (WEIGHTS / "model.safetensors").exists(),
    reason=f"no generator weights in {WEIGHTS}: run `python build/prepare_weights.py`",
)
NEW_TOKENS = 16
SHARED = (
    "The Python standard library is very extensive. It contains built-in modules, written in C, "
    "that provide access to system functionality such as file I/O, as well as modules written in "
    "Python that provide standardized solutions for many problems in everyday programming. "
)
TEXTS = [
    "What is the capital of France?",
    "Write a haiku about compilers.",
    SHARED + "Name one module for regular expressions.",
    SHARED + "Which module reads JSON?",
    SHARED * 3 + "Summarise the paragraph above in one sentence.",
    "Count from one to ten: one, two,",
]


@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(WEIGHTS)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(text)["input_ids"] for text in TEXTS]


@pytest.fixture(scope="module")
def expected(prompts) -> list[list[int]]:
    """HF greedy continuation of each prompt alone, NEW_TOKENS long (EOS ignored on both sides)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(WEIGHTS, dtype=torch.float32).eval()
    config = model.generation_config
    config.eos_token_id = None
    return [
        model.generate(
            torch.tensor([ids]),
            generation_config=config,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )[0, len(ids) :].tolist()
        for ids in prompts
    ]


def serve(config: EngineConfig, prompts, order=None) -> tuple[LLMEngine, dict[str, list[int]]]:
    runner = ModelRunner(config)
    engine = LLMEngine(config, runner, Sampler(), runner.eos_token_ids)
    for index in order or range(len(prompts)):
        engine.add_request(str(index), prompts[index], SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    outputs: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    steps = 0
    while engine.has_unfinished():
        for step_output in engine.step():
            outputs[step_output.request_id].extend(step_output.new_token_ids)
        engine.scheduler.check_integrity()
        steps += 1
        assert steps < 5000, "engine did not finish"
    return engine, outputs


def assert_all_blocks_free(engine: LLMEngine) -> None:
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks, "a finished request kept KV blocks"
    assert engine.stats().kv_usage == 0.0


def config(**overrides) -> EngineConfig:
    values = dict(
        model_dir=str(WEIGHTS),
        block_size=16,
        num_kv_blocks=256,
        max_num_seqs=8,
        max_num_batched_tokens=512,
        max_model_len=1024,
    )
    values.update(overrides)
    return EngineConfig(**values)


def check(engine, outputs, expected):
    for index, tokens in enumerate(expected):
        assert outputs[str(index)] == tokens, f"prompt {index} ({TEXTS[index][:40]!r}) differs from HF"
    assert_all_blocks_free(engine)


def test_concurrent_mixed_lengths(prompts, expected):
    engine, outputs = serve(config(enable_prefix_caching=False), prompts)
    check(engine, outputs, expected)


def test_chunked_prefill(prompts, expected):
    """A 48-token budget splits every long prompt over several steps while others decode."""
    engine, outputs = serve(config(max_num_batched_tokens=48, max_num_seqs=8), prompts)
    check(engine, outputs, expected)


def test_prefix_cache_hits(prompts, expected):
    """Two at a time: later prompts find the shared prefix's blocks cached by earlier ones."""
    engine, outputs = serve(config(block_size=8, max_num_seqs=2), prompts)
    check(engine, outputs, expected)
    stats = engine.stats()
    assert stats.prefix_cache_hits > 0, "prompts sharing a long prefix should hit the cache"


def test_preemption_with_tiny_pool(prompts, expected):
    """Fewer blocks than the batch needs: sequences are preempted and recomputed, output unchanged."""
    prompt_blocks = sum(-(-len(p) // 4) for p in prompts)
    engine, outputs = serve(config(block_size=4, num_kv_blocks=prompt_blocks + 4, enable_prefix_caching=False), prompts)
    check(engine, outputs, expected)
    assert engine.stats().num_preemptions > 0, "the pool was meant to be too small for the whole batch"
