"""Every step shape the scheduler can produce, on every compiled step runtime, against the torch runner.

The compiled runners (ONNX Runtime, TensorRT) share one host side (graph_runner.StepGraphRunner).
A step may carry prefill chunks and no sampling row at all: a prompt longer than the step
budget is chunked, and only its last chunk samples. Such a step once asked the graph for zero
logits rows, which ONNX Runtime's IOBinding refuses (a zero-size tensor has no data pointer)
and which lies outside a TensorRT engine's profile (N >= 1), failing every request in the step.

Shapes, one step each, in an order a scheduler could take them (block size 4):
no sampling row (one chunk; two chunks; a one-token chunk beside a chunk), a prefill that
samples, decodes only, a prefix-cache hit resumed mid-prompt, a prefix hit that leaves one
token (a one-token sampling chunk), and a mix of all. TensorRT runs on the CPU through
test_trt_step's ONNX Runtime stand-in (its host-side profile checks are TrtSession's own).
"""

from __future__ import annotations

import pytest
import torch
from test_model_parity import TinyAllocator
from test_onnx_step import KV_ATOL, LOGITS_ATOL, graph, prompts  # noqa: F401 - fixtures
from test_onnx_step import pytestmark as needs_weights

from tritonrag.compile.onnx_export import OnnxRuntime
from tritonrag.compile.trt_build import GraphInput, derive_profile
from tritonrag.compile.trt_runtime import TensorSpec, TrtSession
from tritonrag.engine.config import EngineConfig
from tritonrag.engine.runners.onnx_runner import OnnxModelRunner
from tritonrag.engine.runners.step_graph import ONNX_TYPES, generator_dims
from tritonrag.engine.runners.torch_runner import ModelRunner
from tritonrag.engine.runners.trt_runner import GENERATOR_ENGINE, TrtModelRunner
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput, Sequence
from tritonrag.paths import generator_weights_dir
from tritonrag.sampling import SamplingParams

pytestmark = needs_weights
CONFIG = dict(model_dir=str(generator_weights_dir()), block_size=4, num_kv_blocks=200, max_num_batched_tokens=256)


class ProfiledOrt(TrtSession):
    """A TrtSession whose engine is the step graph on ONNX Runtime (CPU), with the profile
    `make engines` derives from the settings: the feed checks are TrtSession's own."""

    def __init__(self, graph_path, config: EngineConfig) -> None:
        self.ort, self.engine_path, self.device = OnnxRuntime(graph_path), graph_path, torch.device("cpu")
        graph_inputs = self.ort.session.get_inputs()
        self.inputs = [_spec(i) for i in graph_inputs]
        self.outputs = [_spec(o) for o in self.ort.session.get_outputs()]
        ranges = derive_profile(
            GENERATOR_ENGINE,
            tuple(GraphInput(i.name, tuple(i.shape)) for i in graph_inputs),
            generator_dims(config, config.num_kv_blocks),
        )
        self.profile = {r.name: (r.min, r.max) for r in ranges}
        self.engine_meta = {}

    def _execute(self, tensors):
        values = self.ort.run({name: t.numpy() for name, t in tensors.items()}, self.output_names)
        return {name: torch.from_numpy(values[name]) for name in self.output_names}


def _spec(value) -> TensorSpec:
    types = {**ONNX_TYPES, "tensor(int64)": "int64"}
    return TensorSpec(value.name, types[value.type], tuple(d if isinstance(d, int) else -1 for d in value.shape))


def compiled_runner(runtime: str, graph_path) -> OnnxModelRunner | TrtModelRunner:
    if runtime == "onnxruntime":
        return OnnxModelRunner(EngineConfig(**CONFIG, runtime="onnxruntime", onnx_path=str(graph_path)))
    config = EngineConfig(**CONFIG, runtime="tensorrt", onnx_path=str(graph_path))
    return TrtModelRunner(config, session=ProfiledOrt(graph_path, config))


def shape_plan(prompts: list[list[int]]) -> list[tuple[str, list[tuple[Sequence, int]]]]:
    """(name, [(sequence, tokens to compute)]) per step; `shared` starts as a prefix-cache hit on `a`."""
    a, b, c = (Sequence(name, list(p), SamplingParams()) for name, p in zip("abc", prompts[1:4]))
    na, nb, nc = a.num_prompt_tokens, b.num_prompt_tokens, c.num_prompt_tokens
    assert min(na, nb, nc) > 41 and nc > 61, "the plan needs prompts longer than its chunks"
    return [
        ("no sampling row: one prefill chunk", [(a, 24)]),
        ("no sampling row: two prefill chunks", [(a, 16), (b, 30)]),
        ("no sampling row: a one-token chunk beside a chunk", [(b, 1), (c, 20)]),
        ("only prefill, sampling", [(a, na - 40)]),
        ("only decodes", [(a, 1)]),
        ("prefill to the end beside a decode", [(a, 1), (b, nb - 31), (c, 40)]),
        ("only decodes, two", [(a, 1), (b, 1)]),
        ("mixed: decodes and a chunk that samples", [(a, 1), (b, 1), (c, nc - 60)]),
    ]


def run(runner, plan, alloc: TinyAllocator) -> tuple[torch.Tensor, list[ScheduledChunk]]:
    chunks = [ScheduledChunk(seq, n) for seq, n in plan]
    for chunk in chunks:
        alloc.cover(chunk.seq, chunk.end)
    return runner.execute(SchedulerOutput(chunks)), chunks


def advance(chunks: list[ScheduledChunk], logits: torch.Tensor) -> None:
    sampling = [c for c in chunks if c.samples]
    for chunk in chunks:
        chunk.seq.num_computed_tokens = chunk.end
    for chunk, token in zip(sampling, logits.argmax(-1).tolist()):
        chunk.seq.output_token_ids.append(token)


def prefix_hit(source: Sequence, name: str, cached_blocks: int, suffix: list[int]) -> Sequence:
    """A new sequence whose first `cached_blocks` blocks are `source`'s (as the prefix cache hands them out)."""
    block = CONFIG["block_size"]
    seq = Sequence(name, source.prompt_token_ids[: cached_blocks * block] + suffix, SamplingParams())
    seq.block_table = list(source.block_table[:cached_blocks])
    seq.num_computed_tokens = seq.num_cached_tokens = cached_blocks * block
    return seq


@pytest.mark.parametrize("runtime", ["onnxruntime", "tensorrt"])
def test_every_step_shape_matches_the_torch_runner(graph, prompts, runtime):  # noqa: F811 - fixtures
    ours, ref = compiled_runner(runtime, graph), ModelRunner(EngineConfig(**CONFIG))
    alloc = TinyAllocator(CONFIG["num_kv_blocks"], CONFIG["block_size"])
    plan = shape_plan(prompts)
    a = plan[0][1][0][0]
    for name, step in plan:
        got, chunks = run(ours, step, alloc)
        want = ref.execute(SchedulerOutput(chunks))
        rows = sum(c.samples for c in chunks)
        assert got.shape == want.shape == (rows, ours.vocab_size), name
        torch.testing.assert_close(got, want, atol=LOGITS_ATOL, rtol=0, msg=name)
        torch.testing.assert_close(ours.kv_cache, ref.kv_cache, atol=KV_ATOL, rtol=0, msg=name)
        advance(chunks, want)
    # Prefix-cache hits on a's first blocks: one resumes mid-prompt, one has a single token left.
    resumed = prefix_hit(a, "hit", 8, [42, 43, 44, 45, 46, 47])
    one_left = prefix_hit(a, "one", 10, [99])
    for name, step in [
        ("prefix hit, the rest of the prompt", [(resumed, resumed.num_prompt_tokens - resumed.num_computed_tokens)]),
        ("prefix hit leaving one token, beside decodes", [(one_left, 1), (a, 1)]),
    ]:
        got, chunks = run(ours, step, alloc)
        want = ref.execute(SchedulerOutput(chunks))
        assert got.shape == want.shape == (len(chunks), ours.vocab_size), name
        torch.testing.assert_close(got, want, atol=LOGITS_ATOL, rtol=0, msg=name)
        torch.testing.assert_close(ours.kv_cache, ref.kv_cache, atol=KV_ATOL, rtol=0, msg=name)
        advance(chunks, want)
