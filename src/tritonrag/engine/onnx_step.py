"""The generator's forward step as one ONNX graph over our paged KV cache, and its ONNX Runtime runner.

The runners' host side (`StepGraphRunner`) is shared with TensorRT's (tritonrag.engine.trt_step).

The scheduler and the KV pool stay ours: the graph gets the pool as a read-only input and
returns this step's keys and values; the host writes them into the pool afterwards. No
graph output aliases an input (ONNX Runtime has no in-place outputs), and nothing in the
graph depends on data through Python control flow, so TensorRT can compile the same file.

    packed rows [T]:  [ d0 d1 ... | p0 p0 p0 p0 | p1 p1 p1 ]      (ModelRunner's packing)
                        decode group   prefill group (multi-token chunks)

Per attention group (decodes, and prefill chunks: two groups, so a long chunk does not
pad every decode to its length), sequence s has its cached positions [0, past_lens[s])
at pool slots past_slots[s] and this step's tokens at packed rows new_index[s]:

    keys[s] = pool_K[layer][past_slots[s]]  (P, masked past past_lens[s])  and  K[new_index[s]]  (Q, causal)
    attention = one softmax over both parts, merged by a shared max and denominator

Inputs  input_ids [T], positions [T] int64
        kv_cache [L, 2, num_blocks, block_size, KVH, D] (the runner's pool)
        {decode,prefill}_past_slots [S, P], _past_lens [S], _new_index [S, Q] int64
        token_index [T] int64: packed row -> row of concat(decode [S*Q], prefill [S*Q])
        logits_index [N] int64: packed rows to compute logits for
Outputs logits [N, vocab] float32, new_kv [L, 2, T, KVH, D] (the host scatters it at the
        step's slots). Dynamic axes: T, N, num_blocks, block_size and every S, P, Q.

Exported with torch.onnx.export(dynamo=True, opset 18), through tritonrag.onnx_export's
helpers (staging, check, meta.json): the legacy TorchScript exporter is deprecated, and
PLATFORM.md found the dynamo one's graphs build into TensorRT for RTX. The export takes
about 1.5 minutes on the 2-core CPU (`python -m tritonrag.engine.onnx_step`).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.model import LlamaConfig, LlamaModel, apply_rope, load_llama
from tritonrag.engine.model_runner import DTYPES, PagedRunner, order_chunks, pack_tokens
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput, Sequence
from tritonrag.onnx_export import (
    GRAPH_FILE, OnnxRuntime, check, export_module, max_abs_diff, read_meta, source_fingerprint, stale_reason,
    staging, write_meta,
)
from tritonrag.sampling import SamplingParams

log = logging.getLogger(__name__)

GROUPS = ("decode", "prefill")
INPUT_NAMES = (
    "input_ids", "positions", "kv_cache",
    *(f"{g}_{name}" for g in GROUPS for name in ("past_slots", "past_lens", "new_index")),
    "token_index", "logits_index",
)
OUTPUT_NAMES = ("logits", "new_kv")
OPSET = 18
FORMAT_VERSION = 1          # bump when the graph's interface changes; meta.json records it
EXPORT_DTYPES = ("float32", "float16")
ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


# ---- the graph ---------------------------------------------------------------------------------
class GeneratorStep(nn.Module):
    """One forward step as pure tensor code over `LlamaModel`'s own weights (no second loader)."""

    def __init__(self, model: LlamaModel) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)   # [max_positions, D]
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(
        self, input_ids, positions, kv_cache,
        decode_past_slots, decode_past_lens, decode_new_index,
        prefill_past_slots, prefill_past_lens, prefill_new_index,
        token_index, logits_index,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m, KVH, D = self.model, self.num_kv_heads, self.head_dim
        # The pool as rows of one head [L * 2 * num_blocks * block_size * KVH, D]: a reshape, not a copy.
        # A layer's K or V is selected by offsetting the row index (slicing it out would copy it), and
        # gathering (slot, head) rows gives keys head-major [S, KVH, P, D], ready for MatMul.
        pool = kv_cache.reshape(-1, D)
        layer_rows = kv_cache.shape[2] * kv_cache.shape[3] * KVH
        groups = [
            _group_tensors(slots, lens, new_index, KVH, self.num_heads // KVH)
            for slots, lens, new_index in ((decode_past_slots, decode_past_lens, decode_new_index),
                                           (prefill_past_slots, prefill_past_lens, prefill_new_index))
        ]
        cos = _rows(self.rope_cos, positions).unsqueeze(1)                                 # [T, 1, D]
        sin = _rows(self.rope_sin, positions).unsqueeze(1)
        x = m.embed_tokens(input_ids)                                                      # [T, hidden]
        new_kv = []
        for i, layer in enumerate(m.layers):
            q, k, v = self._qkv(layer.self_attn, layer.input_layernorm(x), cos, sin)
            offsets = (2 * i * layer_rows, (2 * i + 1) * layer_rows)
            outs = [self._attend(q, k, v, pool, offsets, group) for group in groups]
            o = _rows(torch.cat(outs), token_index)                                       # [T, H * D]
            x = x + layer.self_attn.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            new_kv.append(torch.stack((k, v)))                                             # [2, T, KVH, D]
        x = m.norm(_rows(x, logits_index))                                                 # [N, hidden]
        weight = m.embed_tokens.weight if m.lm_head is None else m.lm_head.weight
        return F.linear(x, weight).float(), torch.stack(new_kv)

    def _qkv(self, attn, x, cos, sin):
        """q [T, H, D], k and v [T, KVH, D], RoPE applied: the torch model's fused projection.

        A Split, not four slices: one node, and nothing for the slice-fusing rewrite that
        `_without_quadratic_rewrite` leaves out of the export.
        """
        T, H, KVH, D = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = attn.qkv_proj(x).split([H * D, KVH * D, KVH * D], dim=-1)
        q, k = apply_rope(q.reshape(T, H, D), cos, sin), apply_rope(k.reshape(T, KVH, D), cos, sin)
        return q, k, v.reshape(T, KVH, D)

    def _attend(self, q, k, v, pool, offsets, group: "_GroupTensors") -> torch.Tensor:
        """One group's attention -> [S * Q, H * D] (padded query rows included; token_index drops them).

        Past and new keys are scored separately and merged by one shared max and denominator
        (a softmax over both), so neither keys nor values are concatenated or transposed:
        on a 32-sequence decode those copies took half the step.
        """
        S, KVH, Q = group.new_rows.shape
        D, G = self.head_dim, self.num_heads // KVH
        k_past, v_past = _rows(pool, group.past_rows + offsets[0]), _rows(pool, group.past_rows + offsets[1])
        k_new, v_new = _rows(k.reshape(-1, D), group.new_rows), _rows(v.reshape(-1, D), group.new_rows)
        # the G query heads of each KV head, query-major, pre-scaled: [S, KVH, Q * G, D]
        qg = _rows(q, group.new_index).reshape(S, Q, KVH, G, D).transpose(1, 2).reshape(S, KVH, Q * G, D)
        qg = qg * (D ** -0.5)
        s_past = torch.matmul(qg, k_past.transpose(-1, -2)).float() + group.past_bias   # [S, KVH, Q * G, P]
        s_new = torch.matmul(qg, k_new.transpose(-1, -2)).float() + group.new_bias      # [S, KVH, Q * G, Q]
        top = torch.maximum(s_past.amax(-1, keepdim=True), s_new.amax(-1, keepdim=True))
        e_past, e_new = torch.exp(s_past - top), torch.exp(s_new - top)
        total = e_past.sum(-1, keepdim=True) + e_new.sum(-1, keepdim=True)
        if q.dtype == torch.float32:   # normalise the [.., D] output, not the [.., P] weights: fewer passes
            o = (torch.matmul(e_past, v_past) + torch.matmul(e_new, v_new)) / total
        else:                          # half precision: unnormalised sums over P keys could overflow
            o = torch.matmul((e_past / total).to(q.dtype), v_past) + torch.matmul((e_new / total).to(q.dtype), v_new)
        return o.reshape(S, KVH, Q, G, D).transpose(1, 2).reshape(S * Q, self.num_heads * D)


@dataclass
class _GroupTensors:
    """One group's index and mask tensors inside the graph, built once per step for every layer."""

    new_index: torch.Tensor    # [S, Q] packed rows of the new tokens
    past_rows: torch.Tensor    # [S, KVH, P] row of (slot, head) in layer 0's K; + offset for other layers
    new_rows: torch.Tensor     # [S, KVH, Q] row of (packed token, head) in k reshaped to [T * KVH, D]
    past_bias: torch.Tensor    # [S, 1, 1, P] float32: 0 for cached positions, -inf for padding
    new_bias: torch.Tensor     # [1, 1, Q * G, Q] float32: causal (query q sees new keys j <= q)


def _group_tensors(past_slots, past_lens, new_index, num_kv_heads: int, group: int) -> _GroupTensors:
    """Rows to gather and additive masks of one group. A padded query row (beyond its chunk)
    still sees new key 0, so its softmax stays finite; its output is dropped."""
    P, Q = past_slots.shape[1], new_index.shape[1]
    heads = torch.arange(num_kv_heads, device=past_slots.device).reshape(1, num_kv_heads, 1)
    past_rows = past_slots.unsqueeze(1) * num_kv_heads + heads
    new_rows = new_index.unsqueeze(1) * num_kv_heads + heads
    seen = torch.arange(P, device=past_slots.device).unsqueeze(0) < past_lens.unsqueeze(1)          # [S, P]
    past_bias = torch.zeros(seen.shape, device=past_slots.device).masked_fill(~seen, float("-inf"))
    q = torch.arange(Q, device=past_slots.device)
    causal = (q.unsqueeze(0) <= q.unsqueeze(1)).unsqueeze(1).expand(Q, group, Q).reshape(Q * group, Q)
    new_bias = torch.zeros(causal.shape, device=past_slots.device).masked_fill(~causal, float("-inf"))
    return _GroupTensors(new_index, past_rows, new_rows, past_bias.reshape(-1, 1, 1, P), new_bias.reshape(1, 1, Q * group, Q))


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for an index of any rank, as one ONNX Gather (advanced indexing exports as GatherND)."""
    return torch.index_select(table, 0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])


# ---- host side: a SchedulerOutput as graph inputs -----------------------------------------------------
@dataclass
class AttentionGroup:
    """One group's index tensors (int64)."""

    past_slots: torch.Tensor   # [S, P] pool slot of each cached position; padding points at a valid slot
    past_lens: torch.Tensor    # [S] cached positions per sequence (the chunk's start)
    new_index: torch.Tensor    # [S, Q] packed row of each new token; padding repeats the last one


@dataclass
class StepInputs:
    """Everything one step feeds the graph except the pool, plus where its K/V go afterwards."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    decode: AttentionGroup
    prefill: AttentionGroup
    token_index: torch.Tensor
    logits_index: torch.Tensor
    slot_mapping: torch.Tensor   # [T] pool slot of each packed token (host-side scatter, not a graph input)

    def feeds(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "positions": self.positions}
        for name in GROUPS:
            group = getattr(self, name)
            out |= {f"{name}_past_slots": group.past_slots, f"{name}_past_lens": group.past_lens,
                    f"{name}_new_index": group.new_index}
        return out | {"token_index": self.token_index, "logits_index": self.logits_index}


def build_step_inputs(chunks: list[ScheduledChunk], logits_rows: list[int], block_size: int) -> StepInputs:
    """Graph inputs for chunks in packing order (`order_chunks`): single-token chunks, then the rest."""
    input_ids, positions = pack_tokens(chunks)
    num_decodes = sum(1 for c in chunks if c.num_new_tokens == 1)
    starts = np.cumsum([0] + [c.num_new_tokens for c in chunks])
    decode, decode_index = _group(chunks[:num_decodes], starts[:num_decodes], block_size, base=0)
    base = decode.new_index.numel()
    prefill, prefill_index = _group(chunks[num_decodes:], starts[num_decodes:-1], block_size, base)
    token_index = np.concatenate([decode_index, prefill_index])
    slot_mapping = np.concatenate([_slots(c.seq.block_table, np.arange(c.start, c.end), block_size) for c in chunks])
    return StepInputs(
        input_ids, positions, decode, prefill, torch.from_numpy(token_index),
        torch.tensor(logits_rows, dtype=torch.long), torch.from_numpy(slot_mapping),
    )


def _group(chunks: list[ScheduledChunk], first_rows: np.ndarray, block_size: int,
           base: int) -> tuple[AttentionGroup, np.ndarray]:
    """A group's tensors and the flat index (from `base`) of each of its real tokens, in packed order.

    An empty group gets one dummy sequence (one query on packed row 0, nothing cached): the
    graph's shapes never reach zero, and token_index never selects the dummy's output.
    """
    if not chunks:
        zeros = torch.zeros((1, 1), dtype=torch.long)
        return AttentionGroup(zeros, torch.zeros(1, dtype=torch.long), zeros.clone()), np.empty(0, np.int64)
    q_lens = np.array([c.num_new_tokens for c in chunks])
    past_lens = np.array([c.start for c in chunks])
    S, Q, P = len(chunks), int(q_lens.max()), max(int(past_lens.max()), 1)
    num_blocks = -(-P // block_size)
    tables = np.zeros((S, num_blocks), dtype=np.int64)
    for row, chunk in enumerate(chunks):
        table = chunk.seq.block_table[:num_blocks]
        tables[row, : len(table)] = table
    past_slots = _slots(tables, np.arange(P), block_size)                                # [S, P]
    new_index = first_rows[:, None] + np.minimum(np.arange(Q)[None, :], q_lens[:, None] - 1)
    flat = np.concatenate([base + s * Q + np.arange(q) for s, q in enumerate(q_lens)])
    group = AttentionGroup(torch.from_numpy(past_slots), torch.from_numpy(past_lens.astype(np.int64)),
                           torch.from_numpy(new_index.astype(np.int64)))
    return group, flat


def _slots(tables, positions: np.ndarray, block_size: int) -> np.ndarray:
    """Pool slots (block * block_size + offset) of `positions` through one table [NB] or many [S, NB]."""
    tables = np.asarray(tables, dtype=np.int64)
    return tables[..., positions // block_size] * block_size + positions % block_size


# ---- export ------------------------------------------------------------------------------------------
# Parity at export: ONNX Runtime against this module run eagerly by torch, on two steps of
# random tokens. Measured max |diff| in float32: logits 4.3e-4 (magnitude 27: 2e-5 relative),
# K/V 5e-5; ~1e-4 on logits of real text (tests/engine_model/test_onnx_step.py). float16:
# logits 0.17, K/V 0.084 at magnitude ~20 (5 ulps: the two round differently over 30 layers).
PARITY_ATOL = {"float32": {"logits": 1e-3, "new_kv": 5e-4}, "float16": {"logits": 0.5, "new_kv": 0.25}}


def example_inputs(cfg: LlamaConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Tracing inputs by name: every dynamic axis >= 2 (torch.export specialises sizes 0 and 1)
    and no two alike (equal sizes could be taken for the same symbol)."""
    T, num_blocks, block_size, N = 11, 17, 4, 9
    (sd, pd, qd), (sp, pp, qp) = (2, 5, 3), (6, 13, 7)
    gen = torch.Generator().manual_seed(0)

    def ints(high, *shape):
        return torch.randint(0, high, shape, generator=gen)

    kv = torch.randn(cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, generator=gen).to(dtype)
    slots = num_blocks * block_size
    values = (
        ints(cfg.vocab_size, T), ints(64, T), kv,
        ints(slots, sd, pd), ints(pd + 1, sd), ints(T, sd, qd),
        ints(slots, sp, pp), ints(pp + 1, sp), ints(T, sp, qp),
        ints(sd * qd + sp * qp, T), ints(T, N),
    )
    return dict(zip(INPUT_NAMES, values))


def dynamic_axes() -> dict[str, dict[int, str]]:
    """Each input's dynamic axes by name; a name shared by several inputs is one dimension."""
    axes = {"input_ids": {0: "T"}, "positions": {0: "T"}, "kv_cache": {2: "num_blocks", 3: "block_size"}}
    for g in GROUPS:
        axes |= {f"{g}_past_slots": {0: f"{g}_seqs", 1: f"{g}_past"}, f"{g}_past_lens": {0: f"{g}_seqs"},
                 f"{g}_new_index": {0: f"{g}_seqs", 1: f"{g}_new"}}
    return axes | {"token_index": {0: "T"}, "logits_index": {0: "N"}}


def export_generator_step(model_dir: str | Path, out_dir: str | Path, dtype: str = "float32",
                          max_positions: int | None = None) -> Path:
    """Export the step graph to out_dir/model.onnx (weights inside), check it with onnx.checker,
    measure its parity with torch (raises past tolerance: nothing is written), write meta.json.

    About 1.5 minutes on the 2-core CPU, most of it in torch.export's decompositions.
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"the step graph exports as {' or '.join(EXPORT_DTYPES)}, not {dtype!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    started, code, source = time.perf_counter(), code_fingerprint(), source_fingerprint(model_dir)
    model = load_llama(model_dir, DTYPES[dtype], "cpu", max_positions)
    step = GeneratorStep(model).eval()
    with staging(out_dir) as folder, torch.no_grad():
        with _without_quadratic_rewrite():
            path = export_module(step, example_inputs(model.config, DTYPES[dtype]), folder / GRAPH_FILE,
                                 OUTPUT_NAMES, dynamic_axes())
        check(path)
        extra = {"dtype": dtype, "interface_version": FORMAT_VERSION, "code_sha256": code,
                 "max_positions": int(model.rope_cos.shape[0]), "dynamic_axes": dynamic_axes()}
        meta = write_meta(path, "generator", source=source, parity=step_parity(step, path, dtype), extra=extra,
                          export_seconds=time.perf_counter() - started)
    log.info("exported the generator step to %s (%.0f MB) in %.0f s", out_dir / GRAPH_FILE, meta["bytes"] / 1e6,
             meta["export_seconds"])
    return out_dir / GRAPH_FILE


def step_parity(step: GeneratorStep, path: Path, dtype: str) -> dict:
    """Two steps through ONNX Runtime and through `step` eagerly, from the same pool, block size 4:
    (1) a 20-token prompt and the first 9 tokens of another; (2) the first one's decode, the
    other's next 12 tokens after its 9 cached ones, and a fresh 7-token prompt."""
    cfg, bs = step.model.config, 4
    runtime = OnnxRuntime(path)
    pool = torch.zeros(cfg.num_layers, 2, 16, bs, cfg.num_kv_heads, cfg.head_dim, dtype=DTYPES[dtype])
    gen = torch.Generator().manual_seed(0)
    a, b, c = (Sequence(name, torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist(), SamplingParams())
               for name, n in (("a", 20), ("b", 21), ("c", 7)))
    a.block_table, b.block_table, c.block_table = [5, 0, 9, 2, 7, 11], [1, 8, 3, 12, 14, 6], [4, 10]
    worst = {"logits": 0.0, "new_kv": 0.0}
    for plan in ([(a, 20), (b, 9)], [(a, 1), (b, 12), (c, 7)]):
        chunks = [ScheduledChunk(seq, n) for seq, n in plan]
        inputs = build_step_inputs(*order_chunks(SchedulerOutput(chunks)), bs)
        feeds = inputs.feeds() | {"kv_cache": pool}
        want = dict(zip(OUTPUT_NAMES, step(**feeds)))
        got = runtime.run({name: t.numpy() for name, t in feeds.items()}, OUTPUT_NAMES)
        for name in worst:
            worst[name] = max(worst[name], max_abs_diff(got[name], want[name].float().numpy()))
        pool.view(cfg.num_layers, 2, -1, cfg.num_kv_heads, cfg.head_dim).index_copy_(2, inputs.slot_mapping, want["new_kv"])
        tokens = iter(want["logits"].argmax(-1).tolist())
        for chunk in chunks:
            sampled = chunk.samples
            chunk.seq.num_computed_tokens = chunk.end
            if sampled:
                chunk.seq.output_token_ids.append(next(tokens))
    tolerance = PARITY_ATOL[dtype]
    over = {name: d for name, d in worst.items() if not d <= tolerance[name]}
    if over:
        raise RuntimeError(f"ONNX Runtime differs from torch beyond tolerance {tolerance}: {over}; no graph written")
    return {"reference": f"torch, this module eagerly ({dtype}, cpu)", "batch": " ".join(step_parity.__doc__.split(":", 1)[1].split()),
            "max_abs_diff": worst, "tolerance": tolerance}


@contextmanager
def _without_quadratic_rewrite():
    """Leave onnxscript's SlicesSplit rewrite out of the exporter's optimizer while exporting.

    The rule (two Slices -> one Split) has two output nodes, and onnxscript 0.7 matches such
    patterns by walking the whole graph for every node: quadratic, about 3 of the 4.5 minutes
    this 30-layer export took on 2 cores. Our graph has no Slice nodes (`_qkv` splits), so the
    rule cannot fire here and leaving it out changes nothing in the result.
    """
    try:
        from onnxscript import rewriter
        from onnxscript.rewriter.rules.common import slice_split_rule
        rules = rewriter._DEFAULT_REWRITE_RULES
    except (ImportError, AttributeError):   # another onnxscript: export the slow way
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(rule for rule in rules if rule is not slice_split_rule)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def code_fingerprint() -> str:
    """Hash of what shapes the graph: the tracing code here, the model module and the exporter's
    versions. The runner's code is left out: editing it needs no new export."""
    import onnxscript

    from tritonrag.engine import model

    digest = hashlib.sha256(f"torch {torch.__version__} onnxscript {onnxscript.__version__}".encode())
    for obj in (GeneratorStep, _GroupTensors, _group_tensors, _rows, example_inputs, dynamic_axes, export_generator_step,
                _without_quadratic_rewrite):
        digest.update(inspect.getsource(obj).encode())
    digest.update(Path(model.__file__).read_bytes())
    return digest.hexdigest()


def stale_graph_reason(out_dir: str | Path, model_dir: str | Path, dtype: str = "float32") -> str | None:
    """Why out_dir holds no graph of this dtype traced by this code from these weights (None: it does).

    tritonrag.onnx_export.stale_reason checks the graph file and the weights; this adds the
    dtype and the code (an edit of the graph's code must re-export).
    """
    out_dir = Path(out_dir)
    reason = stale_reason(out_dir, Path(model_dir))
    if reason:
        return reason
    meta = read_meta(Path(out_dir)) or {}
    if meta.get("dtype") != dtype:
        return f"{out_dir} holds a {meta.get('dtype')} graph, not {dtype}"
    if meta.get("interface_version") != FORMAT_VERSION or meta.get("code_sha256") != code_fingerprint():
        return f"the generator step's code changed since {out_dir / GRAPH_FILE} was exported (re-export)"
    return None


# ---- runners of the step: what ONNX Runtime and TensorRT share ------------------------------------------
class StepGraphRunner(PagedRunner):
    """ModelRunner's interface over the exported step, whatever runtime runs it (host side only).

    The pool is a torch tensor in ModelRunner's layout, on the runner's device. Each step
    packs the scheduled chunks into the graph's inputs (`build_step_inputs`), hands them and
    the pool to the runtime (`_run`, per subclass) and scatters the returned new K/V into
    the pool at the step's slots: the graph never writes the pool itself.
    """

    def _allocate_pool(self) -> None:
        self.kv_cache = self.allocate_kv_cache()
        cfg = self.model_config
        self._slot_view = self.kv_cache.view(cfg.num_layers, 2, -1, cfg.num_kv_heads, cfg.head_dim)

    def execute(self, out: SchedulerOutput) -> torch.Tensor:
        """Logits [number of sampling chunks, vocab] in float32, in chunk order; the step's K/V land in the pool."""
        if out.is_empty:
            return self.empty_logits()
        chunks, logits_rows = order_chunks(out)
        step = build_step_inputs(chunks, logits_rows, self.block_size)
        logits, new_kv = self._run(step)
        # new_kv [L, 2, T, KVH, D] -> the pool's slots [L, 2, NB * BS, KVH, D] at this step's slot_mapping
        self._slot_view.index_copy_(2, step.slot_mapping.to(self.device), new_kv)
        return logits if logits.device.type == "cpu" else logits.cpu()

    def _run(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, vocab] float32, new_kv [L, 2, T, KVH, D] in the pool's dtype) on the runner's device."""
        raise NotImplementedError


# ---- ONNX Runtime runner -----------------------------------------------------------------------------
class OnnxModelRunner(StepGraphRunner):
    """The step graph run by ONNX Runtime.

    The pool is bound to the graph by pointer through an IOBinding, so no step copies it;
    outputs go to torch tensors allocated here.
    """

    runtime = "onnxruntime"

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.onnx_path = Path(config.onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(
                f"onnx_path {self.onnx_path} does not exist (export it: python -m tritonrag.engine.onnx_step)")
        self.session = _session(self.onnx_path, config)
        self._check_graph()
        self._allocate_pool()
        self._device_type = "cuda" if self.device.type == "cuda" else "cpu"
        self.log_ready()

    def _check_graph(self) -> None:
        """The graph must be this model's (pool shape) in this runner's dtype, with room for max_model_len."""
        inputs = {i.name: (i.shape, ONNX_TYPES.get(i.type, i.type)) for i in self.session.get_inputs()}
        meta = read_meta(self.onnx_path.parent) or {}
        reason = step_io_problem(self.onnx_path, inputs, meta.get("max_positions"), self.config, self.model_config)
        if reason:
            raise ValueError(reason)

    def _run(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.model_config
        T, N = step.input_ids.shape[0], step.logits_index.shape[0]
        feeds = {name: t.to(self.device).contiguous() for name, t in step.feeds().items()}
        feeds["kv_cache"] = self.kv_cache
        outputs = {
            "logits": torch.empty(N, cfg.vocab_size, dtype=torch.float32, device=self.device),
            "new_kv": torch.empty(cfg.num_layers, 2, T, cfg.num_kv_heads, cfg.head_dim,
                                  dtype=self.dtype, device=self.device),
        }
        binding = self.session.io_binding()
        for name, tensor in feeds.items():
            binding.bind_input(name, self._device_type, self._device_index, _np_type(tensor.dtype),
                               tuple(tensor.shape), tensor.data_ptr())
        for name, tensor in outputs.items():
            binding.bind_output(name, self._device_type, self._device_index, _np_type(tensor.dtype),
                                tuple(tensor.shape), tensor.data_ptr())
        self.session.run_with_iobinding(binding)
        return outputs["logits"], outputs["new_kv"]

    @property
    def _device_index(self) -> int:
        return self.device.index or 0


def step_io_problem(source: Path, inputs: Mapping[str, tuple[Sequence, str]], max_positions: int | None,
                    config: EngineConfig, model: LlamaConfig) -> str | None:
    """Why a compiled step (graph or engine at `source`; `inputs`: name -> (shape, dtype name))
    cannot serve `config` on `model`, or None.

    It must take the step's inputs, a pool of the model's shape (layers, 2, KV heads, head
    dim; blocks and block size are dynamic) in the config's dtype, and have a RoPE table as
    long as max_model_len (when its graph says how long).
    """
    missing = set(INPUT_NAMES) - set(inputs)
    if missing:
        return f"{source} is not a generator step: no input(s) {sorted(missing)}"
    kv_shape, kv_dtype = inputs["kv_cache"]
    want = [model.num_layers, 2, model.num_kv_heads, model.head_dim]
    got = [kv_shape[0], kv_shape[1], kv_shape[4], kv_shape[5]]
    if got != want:
        return (f"{source} was exported from another model: KV pool dims {got}, "
                f"{config.model_dir} needs {want} (layers, 2, kv heads, head dim)")
    return _mismatch(source, kv_dtype, max_positions, config)


def graph_mismatch(config: EngineConfig) -> str | None:
    """Why the graph at config.onnx_path cannot serve `config` (dtype, context length), from its
    meta.json, before anything is loaded; None if it can or there is no meta.json to tell."""
    path = Path(config.onnx_path)
    meta = read_meta(path.parent) or {}
    return _mismatch(path, meta["dtype"], meta.get("max_positions"), config) if "dtype" in meta else None


def _mismatch(path: Path, graph_dtype: str, max_positions: int | None, config: EngineConfig) -> str | None:
    if graph_dtype != config.dtype:
        fix = (f"export it with --dtype {config.dtype}" if config.dtype in EXPORT_DTYPES
               else f"the graph exports as {' or '.join(EXPORT_DTYPES)}")
        return (f"{path} is a {graph_dtype} graph but the engine's dtype is {config.dtype} "
                f"({fix}, or set dtype={graph_dtype})")
    if max_positions is not None and config.max_model_len > max_positions:
        return f"max_model_len {config.max_model_len} exceeds the graph's RoPE table ({max_positions} positions)"
    return None


def _np_type(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]


def _session(path: Path, config: EngineConfig):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if config.num_threads > 0:
        options.intra_op_num_threads = config.num_threads
    # ORT's pool threads spin after a run by default; here torch (the KV scatter, the sampler)
    # runs right after on the same cores, and spinning threads starved it (2-5x slower torch ops).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if config.device.startswith("cuda"):   # untested here: this machine's onnxruntime has no CUDA provider
        providers.insert(0, "CUDAExecutionProvider")
    started = time.monotonic()
    session = ort.InferenceSession(str(path), options, providers=providers)
    log.info("onnxruntime %s: loaded %s in %.1f s (%s)", ort.__version__, path, time.monotonic() - started,
             ", ".join(session.get_providers()))
    return session


# ---- command line: make onnx -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from tritonrag.paths import generator_weights_dir, onnx_dir

    parser = argparse.ArgumentParser(description="Export the generator's forward step over the paged KV cache to ONNX.")
    parser.add_argument("--model-dir", default=str(generator_weights_dir()))
    parser.add_argument("--out-dir", default=str(onnx_dir() / "generator"))
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="float32")
    parser.add_argument("--max-positions", type=int, default=None, help="RoPE table length (default: the model's)")
    parser.add_argument("--force", action="store_true", help="export even if meta.json says the graph is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stale = None if args.force else stale_graph_reason(args.out_dir, args.model_dir, args.dtype)
    if not args.force and stale is None:
        print(f"{args.out_dir}/{GRAPH_FILE} is up to date")
        return 0
    print(f"exporting the generator step from {args.model_dir} ({args.dtype}; {stale or 'forced'}); "
          "about 1.5 to 2 minutes on 2 CPU cores")
    path = export_generator_step(args.model_dir, args.out_dir, args.dtype, args.max_positions)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) and meta.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
