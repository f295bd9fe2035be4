"""The generator's forward step as one pure-tensor module over our paged KV cache: the step description every
compiled runner shares (graph inputs and outputs, their dynamic axes and ranges, host-side packing).
The runners' host side (`StepGraphRunner`) is shared with TensorRT's (tritonrag.engine.runners.trt_runner).

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


Exported by tritonrag.engine.runners.step_export; run by onnx_runner (ONNX Runtime) and
trt_runner (TensorRT), both over graph_runner.StepGraphRunner.
"""

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from tritonrag.compile.onnx_export import read_meta
from tritonrag.compile.trt_build import DimRange
from tritonrag.engine.config import EngineConfig
from tritonrag.engine.runners.base import pack_tokens
from tritonrag.engine.runners.llama import Attention, DecoderLayer, LlamaConfig, LlamaModel, apply_rope
from tritonrag.engine.sequence import ScheduledChunk

log = logging.getLogger(__name__)

GROUPS = ("decode", "prefill")
INPUT_NAMES = (
    "input_ids",
    "positions",
    "kv_cache",
    *(f"{g}_{name}" for g in GROUPS for name in ("past_slots", "past_lens", "new_index")),
    "token_index",
    "logits_index",
)
OUTPUT_NAMES = ("logits", "new_kv")
OPSET = 18
FORMAT_VERSION = 1  # bump when the graph's interface changes; meta.json records it
EXPORT_DTYPES = ("float32", "float16")
ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


# ---- the graph ---------------------------------------------------------------------------------
class GeneratorStep(nn.Module):
    """One forward step as pure tensor code over `LlamaModel`'s own weights (no second loader)."""

    rope_cos: torch.Tensor  # buffers, registered in __init__
    rope_sin: torch.Tensor

    def __init__(self, model: LlamaModel) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)  # [max_positions, D]
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        decode_past_slots: torch.Tensor,
        decode_past_lens: torch.Tensor,
        decode_new_index: torch.Tensor,
        prefill_past_slots: torch.Tensor,
        prefill_past_lens: torch.Tensor,
        prefill_new_index: torch.Tensor,
        token_index: torch.Tensor,
        logits_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m, KVH, D = self.model, self.num_kv_heads, self.head_dim
        # The pool as rows of one head [L * 2 * num_blocks * block_size * KVH, D]: a reshape, not a copy.
        # A layer's K or V is selected by offsetting the row index (slicing it out would copy it), and
        # gathering (slot, head) rows gives keys head-major [S, KVH, P, D], ready for MatMul.
        pool = kv_cache.reshape(-1, D)
        layer_rows = kv_cache.shape[2] * kv_cache.shape[3] * KVH
        groups = [
            _group_tensors(slots, lens, new_index, KVH, self.num_heads // KVH)
            for slots, lens, new_index in (
                (decode_past_slots, decode_past_lens, decode_new_index),
                (prefill_past_slots, prefill_past_lens, prefill_new_index),
            )
        ]
        cos = _rows(self.rope_cos, positions).unsqueeze(1)  # [T, 1, D]
        sin = _rows(self.rope_sin, positions).unsqueeze(1)
        x = m.embed_tokens(input_ids)  # [T, hidden]
        new_kv = []
        for i, layer in enumerate(cast(Iterable[DecoderLayer], m.layers)):
            q, k, v = self._qkv(layer.self_attn, layer.input_layernorm(x), cos, sin)
            offsets = (2 * i * layer_rows, (2 * i + 1) * layer_rows)
            outs = [self._attend(q, k, v, pool, offsets, group) for group in groups]
            o = _rows(torch.cat(outs), token_index)  # [T, H * D]
            x = x + layer.self_attn.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            new_kv.append(torch.stack((k, v)))  # [2, T, KVH, D]
        x = m.norm(_rows(x, logits_index))  # [N, hidden]
        weight = m.embed_tokens.weight if m.lm_head is None else m.lm_head.weight
        return F.linear(x, weight).float(), torch.stack(new_kv)

    def _qkv(
        self, attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, H, D], k and v [T, KVH, D], RoPE applied: the torch model's fused projection.

        A Split, not four slices: one node, and nothing for the slice-fusing rewrite that
        `_without_quadratic_rewrite` leaves out of the export.
        """
        T, H, KVH, D = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = attn.qkv_proj(x).split([H * D, KVH * D, KVH * D], dim=-1)
        q, k = apply_rope(q.reshape(T, H, D), cos, sin), apply_rope(k.reshape(T, KVH, D), cos, sin)
        return q, k, v.reshape(T, KVH, D)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pool: torch.Tensor,
        offsets: tuple[int, int],
        group: "_GroupTensors",
    ) -> torch.Tensor:
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
        qg = qg * (D**-0.5)
        s_past = torch.matmul(qg, k_past.transpose(-1, -2)).float() + group.past_bias  # [S, KVH, Q * G, P]
        s_new = torch.matmul(qg, k_new.transpose(-1, -2)).float() + group.new_bias  # [S, KVH, Q * G, Q]
        top = torch.maximum(s_past.amax(-1, keepdim=True), s_new.amax(-1, keepdim=True))
        e_past, e_new = torch.exp(s_past - top), torch.exp(s_new - top)
        total = e_past.sum(-1, keepdim=True) + e_new.sum(-1, keepdim=True)
        if q.dtype == torch.float32:  # normalise the [.., D] output, not the [.., P] weights: fewer passes
            o = (torch.matmul(e_past, v_past) + torch.matmul(e_new, v_new)) / total
        else:  # half precision: unnormalised sums over P keys could overflow
            o = torch.matmul((e_past / total).to(q.dtype), v_past) + torch.matmul((e_new / total).to(q.dtype), v_new)
        return o.reshape(S, KVH, Q, G, D).transpose(1, 2).reshape(S * Q, self.num_heads * D)


@dataclass
class _GroupTensors:
    """One group's index and mask tensors inside the graph, built once per step for every layer."""

    new_index: torch.Tensor  # [S, Q] packed rows of the new tokens
    past_rows: torch.Tensor  # [S, KVH, P] row of (slot, head) in layer 0's K; + offset for other layers
    new_rows: torch.Tensor  # [S, KVH, Q] row of (packed token, head) in k reshaped to [T * KVH, D]
    past_bias: torch.Tensor  # [S, 1, 1, P] float32: 0 for cached positions, -inf for padding
    new_bias: torch.Tensor  # [1, 1, Q * G, Q] float32: causal (query q sees new keys j <= q)


def _group_tensors(
    past_slots: torch.Tensor, past_lens: torch.Tensor, new_index: torch.Tensor, num_kv_heads: int, group: int
) -> _GroupTensors:
    """Rows to gather and additive masks of one group. A padded query row (beyond its chunk)
    still sees new key 0, so its softmax stays finite; its output is dropped."""
    P, Q = past_slots.shape[1], new_index.shape[1]
    heads = torch.arange(num_kv_heads, device=past_slots.device).reshape(1, num_kv_heads, 1)
    past_rows = past_slots.unsqueeze(1) * num_kv_heads + heads
    new_rows = new_index.unsqueeze(1) * num_kv_heads + heads
    seen = torch.arange(P, device=past_slots.device).unsqueeze(0) < past_lens.unsqueeze(1)  # [S, P]
    past_bias = torch.zeros(seen.shape, device=past_slots.device).masked_fill(~seen, float("-inf"))
    q = torch.arange(Q, device=past_slots.device)
    causal = (q.unsqueeze(0) <= q.unsqueeze(1)).unsqueeze(1).expand(Q, group, Q).reshape(Q * group, Q)
    new_bias = torch.zeros(causal.shape, device=past_slots.device).masked_fill(~causal, float("-inf"))
    return _GroupTensors(
        new_index, past_rows, new_rows, past_bias.reshape(-1, 1, 1, P), new_bias.reshape(1, 1, Q * group, Q)
    )


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for an index of any rank, as one ONNX Gather (advanced indexing exports as GatherND)."""
    return torch.index_select(table, 0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])


# ---- host side: a SchedulerOutput as graph inputs -----------------------------------------------------
@dataclass
class AttentionGroup:
    """One group's index tensors (int64)."""

    past_slots: torch.Tensor  # [S, P] pool slot of each cached position; padding points at a valid slot
    past_lens: torch.Tensor  # [S] cached positions per sequence (the chunk's start)
    new_index: torch.Tensor  # [S, Q] packed row of each new token; padding repeats the last one


@dataclass
class StepInputs:
    """Everything one step feeds the graph except the pool, plus where its K/V go afterwards."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    decode: AttentionGroup
    prefill: AttentionGroup
    token_index: torch.Tensor
    logits_index: torch.Tensor
    slot_mapping: torch.Tensor  # [T] pool slot of each packed token (host-side scatter, not a graph input)

    def feeds(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "positions": self.positions}
        for name in GROUPS:
            group = getattr(self, name)
            out |= {
                f"{name}_past_slots": group.past_slots,
                f"{name}_past_lens": group.past_lens,
                f"{name}_new_index": group.new_index,
            }
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
        input_ids,
        positions,
        decode,
        prefill,
        torch.from_numpy(token_index),
        torch.tensor(logits_rows, dtype=torch.long),
        torch.from_numpy(slot_mapping),
    )


def _group(
    chunks: list[ScheduledChunk], first_rows: npt.NDArray[np.int64], block_size: int, base: int
) -> tuple[AttentionGroup, npt.NDArray[np.int64]]:
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
    past_slots = _slots(tables, np.arange(P), block_size)  # [S, P]
    new_index = first_rows[:, None] + np.minimum(np.arange(Q)[None, :], q_lens[:, None] - 1)
    flat = np.concatenate([base + s * Q + np.arange(q) for s, q in enumerate(q_lens)])
    group = AttentionGroup(
        torch.from_numpy(past_slots),
        torch.from_numpy(past_lens.astype(np.int64)),
        torch.from_numpy(new_index.astype(np.int64)),
    )
    return group, flat


def _slots(
    tables: list[int] | npt.NDArray[np.int64], positions: npt.NDArray[np.int64], block_size: int
) -> npt.NDArray[np.int64]:
    """Pool slots (block * block_size + offset) of `positions` through one table [NB] or many [S, NB]."""
    tables = np.asarray(tables, dtype=np.int64)
    slots: npt.NDArray[np.int64] = tables[..., positions // block_size] * block_size + positions % block_size
    return slots


def example_inputs(cfg: LlamaConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Tracing inputs by name: every dynamic axis >= 2 (torch.export specialises sizes 0 and 1)
    and no two alike (equal sizes could be taken for the same symbol)."""
    T, num_blocks, block_size, N = 11, 17, 4, 9
    (sd, pd, qd), (sp, pp, qp) = (2, 5, 3), (6, 13, 7)
    gen = torch.Generator().manual_seed(0)

    def ints(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=gen)

    kv = torch.randn(cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, generator=gen).to(dtype)
    slots = num_blocks * block_size
    values = (
        ints(cfg.vocab_size, T),
        ints(64, T),
        kv,
        ints(slots, sd, pd),
        ints(pd + 1, sd),
        ints(T, sd, qd),
        ints(slots, sp, pp),
        ints(pp + 1, sp),
        ints(T, sp, qp),
        ints(sd * qd + sp * qp, T),
        ints(T, N),
    )
    return dict(zip(INPUT_NAMES, values))


def dynamic_axes() -> dict[str, dict[int, str]]:
    """Each input's dynamic axes by name; a name shared by several inputs is one dimension."""
    axes = {"input_ids": {0: "T"}, "positions": {0: "T"}, "kv_cache": {2: "num_blocks", 3: "block_size"}}
    for g in GROUPS:
        axes |= {
            f"{g}_past_slots": {0: f"{g}_seqs", 1: f"{g}_past"},
            f"{g}_past_lens": {0: f"{g}_seqs"},
            f"{g}_new_index": {0: f"{g}_seqs", 1: f"{g}_new"},
        }
    return axes | {"token_index": {0: "T"}, "logits_index": {0: "N"}}


def generator_dims(config: EngineConfig, num_kv_blocks: int) -> dict[str, DimRange]:
    """Generator-step axes (tritonrag.engine.runners.onnx_runner.dynamic_shapes) from the engine settings.

    T: packed tokens of a step, up to max_num_batched_tokens; opt max_num_seqs, a step of
    decodes (most steps). N: logits rows, one per sequence. num_blocks: the KV blocks the
    settings allocate. Two attention groups, each with >= 1 sequence (an empty group gets a
    dummy) and past length P >= 1: decodes (Q = 1, up to max_num_seqs of them) and prefill
    chunks (>= 2 tokens each, so at most max_num_batched_tokens // 2 of them, opt one).
    """
    seqs, budget, model_len = config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len
    past = DimRange(1, max(1, model_len // 2), model_len)
    chunk = min(budget, model_len)
    return {
        "T": DimRange(1, min(seqs, budget), budget),
        "N": DimRange(1, seqs, seqs),
        "num_blocks": DimRange(1, num_kv_blocks, num_kv_blocks),
        "block_size": DimRange.fixed(config.block_size),
        "decode_seqs": DimRange(1, seqs, seqs),
        "decode_past": past,
        "decode_new": DimRange.fixed(1),
        "prefill_seqs": DimRange(1, 1, max(1, min(seqs, budget // 2))),
        "prefill_past": past,
        "prefill_new": DimRange(1, chunk, chunk),
    }


def step_io_problem(
    source: Path,
    inputs: Mapping[str, tuple[Sequence[int | str | None], str]],
    max_positions: int | None,
    config: EngineConfig,
    model: LlamaConfig,
) -> str | None:
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
        return (
            f"{source} was exported from another model: KV pool dims {got}, "
            f"{config.model_dir} needs {want} (layers, 2, kv heads, head dim)"
        )
    return _mismatch(source, kv_dtype, max_positions, config)


def graph_mismatch(config: EngineConfig) -> str | None:
    """Why the graph at config.onnx_path cannot serve `config` (dtype, context length), from its
    meta.json, before anything is loaded; None if it can or there is no meta.json to tell."""
    path = Path(config.onnx_path)
    meta = read_meta(path.parent) or {}
    return _mismatch(path, meta["dtype"], meta.get("max_positions"), config) if "dtype" in meta else None


def _mismatch(path: Path, graph_dtype: str, max_positions: int | None, config: EngineConfig) -> str | None:
    if graph_dtype != config.dtype:
        fix = (
            f"export it with --dtype {config.dtype}"
            if config.dtype in EXPORT_DTYPES
            else f"the graph exports as {' or '.join(EXPORT_DTYPES)}"
        )
        return (
            f"{path} is a {graph_dtype} graph but the engine's dtype is {config.dtype} "
            f"({fix}, or set dtype={graph_dtype})"
        )
    if max_positions is not None and config.max_model_len > max_positions:
        return f"max_model_len {config.max_model_len} exceeds the graph's RoPE table ({max_positions} positions)"
    return None
