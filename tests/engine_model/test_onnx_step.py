"""The generator step as an ONNX graph over our paged KV cache, run by ONNX Runtime, against the torch path.

The graph is exported once per module: from `make setup`'s artifact when its meta.json says
it was traced by this code from these weights, else into a temporary folder (about 1.5 to 2
minutes on the 2-core CPU). Real weights throughout.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
from test_engine_parity import SHARED
from test_model_parity import TinyAllocator

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.factory import build_engine
from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.runners.base import order_chunks
from tritonrag.engine.runners.onnx_runner import OnnxModelRunner
from tritonrag.engine.runners.step_export import export_generator_step, stale_graph_reason
from tritonrag.engine.runners.step_graph import INPUT_NAMES, OUTPUT_NAMES, build_step_inputs
from tritonrag.engine.runners.torch_runner import ModelRunner
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput, Sequence
from tritonrag.paths import generator_weights_dir, onnx_dir
from tritonrag.sampling import SamplingParams

WEIGHTS = generator_weights_dir()
pytestmark = pytest.mark.skipif(
    not (WEIGHTS / "model.safetensors").exists(),
    reason=f"no generator weights in {WEIGHTS}: run `python build/prepare_weights.py`",
)

# fp32 both sides; observed max |diff| ~1e-4 on logits of magnitude ~20 (ORT fuses and orders
# reductions differently from torch's SDPA and GEMMs), the same size as our torch path vs HF.
LOGITS_ATOL = 5e-4
KV_ATOL = 5e-4
NEW_TOKENS = 16
# Ops the graph may use: all in TensorRT's ONNX parser; no sequences, loops or If.
TENSORRT_FRIENDLY_OPS = {
    "Add",
    "Cast",
    "Concat",
    "Div",
    "Exp",
    "Expand",
    "Gather",
    "Gemm",
    "LessOrEqual",
    "Less",
    "MatMul",
    "Max",
    "Mul",
    "Neg",
    "Not",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Transpose",
    "Unsqueeze",
    "Where",
}
TEXTS = [
    "What is the capital of France?",
    SHARED + "Name one module for regular expressions.",
    SHARED + "Which module reads JSON?",
    SHARED * 3 + "Summarise the paragraph above in one sentence.",
    "Count from one to ten: one, two,",
]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    built = onnx_dir() / "generator"
    if stale_graph_reason(built, WEIGHTS, "float32") is None:
        return built / "model.onnx"
    return export_generator_step(WEIGHTS, tmp_path_factory.mktemp("onnx") / "generator")


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(WEIGHTS)
    return [tokenizer(text)["input_ids"] for text in TEXTS]


def engine_config(graph=None, **overrides) -> EngineConfig:
    values = dict(
        model_dir=str(WEIGHTS),
        block_size=8,
        num_kv_blocks=160,
        max_num_seqs=4,
        max_num_batched_tokens=48,
        max_model_len=1024,
    )
    if graph is not None:
        values |= dict(runtime="onnxruntime", onnx_path=str(graph))
    return EngineConfig(**(values | overrides))


# ---- the graph itself --------------------------------------------------------------------------
def test_graph_passes_the_checker_with_dynamic_axes_and_tensorrt_friendly_ops(graph):
    import onnx

    onnx.checker.check_model(str(graph), full_check=True)
    model = onnx.load(str(graph), load_external_data=False)
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) == 18
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["kv_cache"] == [30, 2, "num_blocks", "block_size", 3, 64]
    assert all(isinstance(d, str) for name, shape in dims.items() if name != "kv_cache" for d in shape)
    ops = {node.op_type for node in model.graph.node}
    assert ops <= TENSORRT_FRIENDLY_OPS, ops - TENSORRT_FRIENDLY_OPS
    assert graph.stat().st_size < 2**31, "weights are stored inside: the file must stay under protobuf's 2 GB"


# ---- host-side inputs ------------------------------------------------------------------------------
def test_step_inputs_pack_groups_slots_and_token_index():
    """Two decodes, a fresh prompt and a chunk after a cached prefix, block size 4."""
    seqs = [Sequence(str(i), list(range(n)), SamplingParams()) for i, n in enumerate((6, 3, 10, 5))]
    tables = [[7, 2], [5], [1, 9, 4], [8, 3]]
    for seq, table, done in zip(seqs, tables, (5, 2, 4, 0)):
        seq.block_table, seq.num_computed_tokens = table, done
    out = SchedulerOutput(
        [ScheduledChunk(seqs[3], 5), ScheduledChunk(seqs[0], 1), ScheduledChunk(seqs[2], 6), ScheduledChunk(seqs[1], 1)]
    )
    chunks, rows = order_chunks(out)
    step = build_step_inputs(chunks, rows, block_size=4)
    # packed rows: seq0 | seq1 | seq3 x5 (2-6) | seq2 x6 (7-12)
    assert step.positions.tolist() == [5, 2, 0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9]
    assert step.decode.past_lens.tolist() == [5, 2] and step.decode.new_index.tolist() == [[0], [1]]
    assert step.decode.past_slots[0].tolist() == [28, 29, 30, 31, 8]  # block 7, then block 2
    assert step.decode.past_slots[1, :2].tolist() == [20, 21]
    assert step.prefill.past_lens.tolist() == [0, 4]
    assert step.prefill.past_slots[1].tolist() == [4, 5, 6, 7]  # seq2's cached block 1
    assert step.prefill.new_index.tolist() == [[2, 3, 4, 5, 6, 6], [7, 8, 9, 10, 11, 12]]
    # decode outputs are rows 0-1 of the concat, prefill [2, 6] follows: seq3 -> 2..6 (7 is padding), seq2 -> 8..13
    assert step.token_index.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13]
    assert step.slot_mapping.tolist() == [9, 22, 32, 33, 34, 35, 12, 36, 37, 38, 39, 16, 17]
    assert step.logits_index.tolist() == [6, 0, 12, 1]  # chunk order: seq3, seq0, seq2, seq1


def test_an_empty_group_gets_a_dummy_that_no_token_reads():
    seq = Sequence("a", [5, 6, 7], SamplingParams())
    seq.block_table = [3]
    chunks, rows = order_chunks(SchedulerOutput([ScheduledChunk(seq, 3)]))
    step = build_step_inputs(chunks, rows, block_size=4)
    assert step.decode.new_index.shape == (1, 1) and step.decode.past_lens.tolist() == [0]
    assert step.token_index.tolist() == [1, 2, 3]  # row 0 of the concat is the dummy decode
    assert all(t.shape[0] > 0 for t in step.feeds().values())


# ---- parity with the torch runner ---------------------------------------------------------------------
def test_mixed_batch_logits_and_cache_match_the_torch_runner(graph, prompts):
    """Prefill chunks (one after a cached prefix) beside decodes: each step's logits and the pool agree."""
    config = dict(model_dir=str(WEIGHTS), block_size=4, num_kv_blocks=128)
    ours = OnnxModelRunner(EngineConfig(**config, runtime="onnxruntime", onnx_path=str(graph)))
    ref = ModelRunner(EngineConfig(**config))
    alloc = TinyAllocator(128, 4)
    a, b, c = (Sequence(str(i), list(p), SamplingParams()) for i, p in enumerate(prompts[1:4]))
    half = b.num_prompt_tokens // 2
    plans = [
        [(a, a.num_prompt_tokens), (b, half)],
        [(b, b.num_prompt_tokens - half), (a, 1), (c, 40)],  # b continues after its cached first half
        [(a, 1), (b, 1), (c, c.num_prompt_tokens - 40)],
        [(a, 1), (b, 1), (c, 1)],
    ]
    for plan in plans:
        chunks = [ScheduledChunk(seq, n) for seq, n in plan]
        for chunk in chunks:
            alloc.cover(chunk.seq, chunk.end)
        got, want = ours.execute(SchedulerOutput(chunks)), ref.execute(SchedulerOutput(chunks))
        assert got.dtype == torch.float32 and got.shape == want.shape == (sum(ch.samples for ch in chunks), 49152)
        torch.testing.assert_close(got, want, atol=LOGITS_ATOL, rtol=0)
        torch.testing.assert_close(ours.kv_cache, ref.kv_cache, atol=KV_ATOL, rtol=0)
        sampling = [ch for ch in chunks if ch.samples]
        for chunk in chunks:
            chunk.seq.num_computed_tokens = chunk.end
        for chunk, token in zip(sampling, want.argmax(-1).tolist()):
            chunk.seq.output_token_ids.append(token)


# ---- the whole engine on ONNX Runtime ------------------------------------------------------------------
def serve(config: EngineConfig, prompts: list[list[int]]) -> tuple[LLMEngine, dict[str, list[int]]]:
    engine = build_engine(config)
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    outputs: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    for _ in range(2000):
        if not engine.has_unfinished():
            break
        for step_output in engine.step():
            outputs[step_output.request_id].extend(step_output.new_token_ids)
        engine.scheduler.check_integrity()
    assert not engine.has_unfinished(), "engine did not finish"
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks and engine.stats().kv_usage == 0.0, "a finished request kept KV blocks"
    return engine, outputs


def test_engine_on_onnxruntime_gives_the_torch_engines_greedy_tokens(graph, prompts):
    """Concurrent mixed lengths, chunked prefill (48-token steps) and prefix-cache hits on the shared text.

    The torch engine is itself checked token for token against HF in test_engine_parity.py.
    """
    onnx_engine, got = serve(engine_config(graph), prompts)
    assert type(onnx_engine.runner) is OnnxModelRunner
    torch_engine, want = serve(engine_config(), prompts)
    assert type(torch_engine.runner) is ModelRunner
    assert got == want
    assert all(len(tokens) == NEW_TOKENS for tokens in got.values())
    assert onnx_engine.stats().prefix_cache_hits > 0, "prompts sharing a long prefix should hit the cache"


# ---- runtime choice and bad configuration ------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing graph", "bfloat16 engine"])
def test_a_graph_that_cannot_serve_falls_back_to_torch_with_a_warning(graph, tmp_path, caplog, case):
    if case == "missing graph":
        config, why = engine_config(tmp_path / "model.onnx"), str(tmp_path / "model.onnx")
    else:  # a precision canary (v2:dtype bfloat16) on the float32 graph
        config, why = engine_config(graph, dtype="bfloat16"), "float32 graph but the engine's dtype is bfloat16"
    with caplog.at_level(logging.WARNING, logger="tritonrag.engine.factory"):
        engine = build_engine(config)
    assert type(engine.runner) is ModelRunner
    assert any(why in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_dtype_mismatch_and_unknown_runtime_are_clear_errors(graph):
    with pytest.raises(ValueError, match="float32 graph but the engine.s dtype is bfloat16"):
        OnnxModelRunner(engine_config(graph, dtype="bfloat16"))
    with pytest.raises(ValueError, match="runtime must be one of"):
        EngineConfig(runtime="tvm")
    with pytest.raises(ValueError, match="exceeds the graph's RoPE table"):
        OnnxModelRunner(engine_config(graph, max_model_len=10**6))


def test_kv_pool_is_sized_like_the_torch_runner(graph):
    runner = OnnxModelRunner(engine_config(graph, num_kv_blocks=0, kv_cache_memory_bytes=16 * 2**20, block_size=16))
    assert runner.bytes_per_block == 2 * 30 * 16 * 3 * 64 * 4
    assert runner.num_kv_blocks == 16 * 2**20 // runner.bytes_per_block
    assert tuple(runner.kv_cache.shape) == (30, 2, runner.num_kv_blocks, 16, 3, 64)
    assert runner.eos_token_ids == [2] and runner.vocab_size == 49152
