"""The decoder's attention paths, CPU kernels and prepacked linears against plain reference computations.

No weights needed: a two-layer toy config with random weights and a random paged cache,
so every path (bucketed decodes, a chunk from position 0, a chunk after a cached prefix,
the paged attention op) is checked against one SDPA per sequence over that sequence's own
keys, and each fused kernel against the torch ops it replaces.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F

from tritonrag.engine.runners import llama as model_mod
from tritonrag.engine.runners import paged_attention
from tritonrag.engine.runners.llama import (
    Attention,
    AttentionMetadata,
    GatherScratch,
    Linear,
    LlamaConfig,
    _split_sorted,
    attend_with_prefix,
    can_prepack,
)

CFG = LlamaConfig(
    vocab_size=64,
    hidden_size=96,
    intermediate_size=128,
    num_layers=2,
    num_heads=6,
    num_kv_heads=2,
    head_dim=16,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
BLOCK_SIZE = 4
NUM_BLOCKS = 400


def test_split_sorted_trades_padding_against_bucket_cost():
    widths = [1, 1, 2, 9, 10, 10]
    assert _split_sorted(widths, 10**9) == [(0, 6)]
    assert _split_sorted(widths, 0) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    # cost 4: padding 1 and 2 up to 10 would waste 8 + 9 blocks; two buckets cost 4 more
    assert _split_sorted(widths, 4) == [(0, 3), (3, 6)]


def test_split_sorted_spans_cover_every_index_once():
    rng = random.Random(1)
    for _ in range(20):
        widths = sorted(rng.randint(1, 80) for _ in range(rng.randint(1, 40)))
        spans = _split_sorted(widths, rng.choice([0, 4, 16, 1000]))
        assert [i for a, b in spans for i in range(a, b)] == list(range(len(widths)))


def _sequences(rng: random.Random, contexts: list[int]) -> list[list[int]]:
    free = list(range(NUM_BLOCKS))
    rng.shuffle(free)
    return [[free.pop() for _ in range(-(-ctx // BLOCK_SIZE))] for ctx in contexts]


def test_decode_buckets_cover_each_decode_once_with_its_own_context():
    rng = random.Random(0)
    contexts = [3, 70, 5, 130, 66, 9, 4, 128]
    tables = _sequences(rng, contexts)
    meta = AttentionMetadata.build([1] * len(contexts), contexts, tables, BLOCK_SIZE, [0], "cpu")
    assert len(meta.decode_buckets) > 1, "contexts this far apart should not share one padded bucket"
    seen = []
    for bucket in meta.decode_buckets:
        rows = list(range(bucket.block_tables.shape[0])) if bucket.rows is None else bucket.rows.tolist()
        for i, row in enumerate(rows):
            width = -(-contexts[row] // BLOCK_SIZE)
            assert bucket.block_tables[i, :width].tolist() == tables[row][:width]
            assert int(bucket.mask[i].sum()) == contexts[row]
        seen += rows
    assert sorted(seen) == list(range(len(contexts)))


def _reference(q, k_seq, v_seq, q_positions) -> torch.Tensor:
    """One sequence: q [Tq, H, D] over its keys [C, KVH, D], query i seeing keys <= q_positions[i]."""
    mask = torch.arange(k_seq.shape[0])[None, :] <= q_positions[:, None]
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k_seq.transpose(0, 1)[None],
        v_seq.transpose(0, 1)[None],
        attn_mask=mask,
        enable_gqa=True,
    )
    return o[0].transpose(0, 1)


def kernels() -> paged_attention.CpuKernels:
    """The CPU kernels; skips only where they are switched off or not built for this platform."""
    reason = paged_attention.disabled_reason()
    if reason:
        pytest.skip(f"CPU kernels not used here: {reason}")
    found = paged_attention.load_kernels()
    assert found is not None, "the CPU kernels failed to build on Linux (see the log)"
    return found


def decode_op():
    kernels()  # skips where they are not used
    return paged_attention.load_decode_kernel()


@pytest.mark.parametrize("decode", ["buckets, cost 0", "buckets, cost 16", "one bucket", "paged attention op"])
def test_attention_over_the_paged_cache_matches_per_sequence_sdpa(monkeypatch, decode):
    """Decodes of very different lengths, a chunk from position 0 and a chunk after a cached prefix, packed together."""
    monkeypatch.setattr(
        model_mod, "BUCKET_COST_BLOCKS", {"buckets, cost 0": 0, "buckets, cost 16": 16}.get(decode, 10**9)
    )
    torch.manual_seed(0)
    rng = random.Random(2)
    cfg = (
        CFG if decode != "paged attention op" else dataclasses.replace(CFG, head_dim=64)
    )  # the op is built for 64 and 128
    H, KVH, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn = Attention(cfg, GatherScratch()).eval()
    if decode == "paged attention op":
        attn.kernels = kernels()
    # (query_len, context_len): four decodes, a fresh 9-token chunk, a 7-token chunk after 21 cached tokens
    plan = [(1, 3), (1, 57), (1, 16), (1, 130), (9, 9), (7, 28)]
    tables = _sequences(rng, [ctx for _, ctx in plan])
    k_cache = torch.randn(NUM_BLOCKS, BLOCK_SIZE, KVH, D)
    v_cache = torch.randn(NUM_BLOCKS, BLOCK_SIZE, KVH, D)
    T = sum(q for q, _ in plan)
    x = torch.randn(T, cfg.hidden_size)
    positions = torch.cat([torch.arange(ctx - q, ctx) for q, ctx in plan])
    cos, sin = (t[positions][:, None] for t in model_mod.rope_table(D, CFG.rope_theta, 512))
    meta = AttentionMetadata.build(
        [q for q, _ in plan],
        [c for _, c in plan],
        tables,
        BLOCK_SIZE,
        [0],
        "cpu",
        paged=attn.kernels is not None,
    )
    paged = meta.query_starts is not None
    assert paged == (decode == "paged attention op") and bool(meta.decode_buckets) != paged
    assert bool(meta.prefills) != paged
    with torch.inference_mode():
        got = attn(x, cos, sin, k_cache, v_cache, meta)  # writes this step's K/V too
        qkv = attn.qkv_proj(x)
        q = model_mod.apply_rope(qkv[:, : H * D].view(T, H, D), cos, sin)
        expected, row = [], 0
        for (q_len, ctx), table in zip(plan, tables):
            slots = torch.tensor([table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(ctx)])
            k_seq, v_seq = k_cache.view(-1, KVH, D)[slots], v_cache.view(-1, KVH, D)[slots]
            expected.append(_reference(q[row : row + q_len], k_seq, v_seq, positions[row : row + q_len]))
            row += q_len
        want = attn.o_proj(torch.cat(expected).reshape(T, H * D))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_op_matches_torch_for_every_context_length(dtype):
    """Lengths 1, a block's edges and across many blocks; tables shuffled through the pool."""
    op = decode_op()
    torch.manual_seed(5)
    lens = [1, 2, 15, 16, 17, 31, 32, 33, 200, 517]
    block_size, KVH, G, D = 16, 3, 3, 64
    k_cache, v_cache = (torch.randn(NUM_BLOCKS, block_size, KVH, D).to(dtype) for _ in range(2))
    tables = torch.stack([torch.randperm(NUM_BLOCKS)[:33] for _ in lens])
    q = torch.randn(len(lens), KVH * G, D).to(dtype)
    context_lens = torch.tensor(lens)
    got = op(q, k_cache, v_cache, tables, context_lens, D**-0.5)
    want = paged_attention.reference_decode(q, k_cache, v_cache, tables, context_lens, D**-0.5)
    tolerance = dict(atol=2e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(got, want, **tolerance)


def test_paged_decode_op_rejects_a_context_longer_than_its_table():
    op = decode_op()
    k_cache = v_cache = torch.zeros(8, 16, 3, 64)
    with pytest.raises(RuntimeError, match="context length 40 does not fit the block table"):
        op(torch.zeros(1, 9, 64), k_cache, v_cache, torch.zeros(1, 2, dtype=torch.long), torch.tensor([40]), 0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("head_dim", "groups"), [(64, 3), (128, 2), (64, 1), (64, 8)])
def test_paged_attention_op_matches_torch_for_decodes_and_chunks(dtype, head_dim, groups):
    """One call: decodes at block edges and far past them, chunks from 0 and after a cached prefix,
    chunk lengths under, at and over the 16-token tile, causal within each chunk."""
    ops = kernels()
    torch.manual_seed(6)
    block_size, KVH, D = 16, 2, head_dim
    plan = [(1, 1), (1, 16), (1, 17), (1, 300), (9, 9), (7, 28), (16, 16), (40, 40), (16, 100), (33, 517)]
    k_cache, v_cache = (torch.randn(NUM_BLOCKS, block_size, KVH, D).to(dtype) for _ in range(2))
    tables = torch.stack([torch.randperm(NUM_BLOCKS)[:40] for _ in plan])
    lens = torch.tensor([ctx for _, ctx in plan])
    starts = torch.tensor([0] + [q for q, _ in plan]).cumsum(0)
    q = torch.randn(int(starts[-1]), KVH * groups, D).to(dtype)
    got = ops.paged_attention(q, k_cache, v_cache, tables, lens, starts, D**-0.5)
    want = paged_attention.reference_attention(q, k_cache, v_cache, tables, lens, starts, D**-0.5)
    tolerance = dict(atol=2e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(got, want, **tolerance)


def test_paged_attention_op_refuses_more_queries_than_context():
    ops = kernels()
    cache = torch.zeros(8, 16, 3, 64)
    tables, starts = torch.zeros(1, 2, dtype=torch.long), torch.tensor([0, 5])
    with pytest.raises(RuntimeError, match="5 queries for context length 4"):
        ops.paged_attention(torch.zeros(5, 9, 64), cache, cache, tables, torch.tensor([4]), starts, 0.125)


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norms_round_like_torch(dtype):
    """bf16: bit for bit; fp32: only the mean's summation order differs (a few ulps)."""
    ops = kernels()
    torch.manual_seed(7)
    x, residual = torch.randn(37, 576).to(dtype), torch.randn(37, 576).to(dtype)
    weight = (torch.rand(576) + 0.5).to(dtype)
    exact = dict(atol=0.0, rtol=0.0) if dtype == torch.bfloat16 else dict(atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-5), _hf_rms_norm(x, weight, 1e-5), **exact)
    stream = residual.clone()
    normed = ops.add_rms_norm(x, stream, weight, 1e-5)
    assert torch.equal(stream, x + residual)  # the residual add rounds as torch's add does
    torch.testing.assert_close(normed, _hf_rms_norm(x + residual, weight, 1e-5), **exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_silu_mul_and_rope_kv_write_round_like_torch(dtype):
    ops = kernels()
    torch.manual_seed(8)
    gate_up = 3 * torch.randn(19, 2 * 1536).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    exact = dict(atol=0.0, rtol=0.0) if dtype == torch.bfloat16 else dict(atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ops.silu_mul(gate_up), F.silu(gate) * up, **exact)
    T, H, KVH, D = 23, 9, 3, 64
    qkv = torch.randn(T, (H + 2 * KVH) * D).to(dtype)
    cos, sin = (t.to(dtype)[torch.randint(0, 512, (T,))] for t in model_mod.rope_table(D, 1e5, 512))
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE)[:T]
    k_cache, v_cache = (torch.zeros(NUM_BLOCKS, BLOCK_SIZE, KVH, D, dtype=dtype) for _ in range(2))
    q = ops.rope_kv_write(qkv, cos, sin, slots, k_cache, v_cache, H)
    qk = model_mod.apply_rope(qkv[:, : (H + KVH) * D].view(T, H + KVH, D), cos[:, None], sin[:, None])
    assert torch.equal(q, qk[:, :H])  # every product and sum rounded where torch rounds it
    assert torch.equal(k_cache.view(-1, KVH, D)[slots], qk[:, H:])
    assert torch.equal(v_cache.view(-1, KVH, D)[slots], qkv[:, (H + KVH) * D :].view(T, KVH, D))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_with_cpu_kernels_matches_the_torch_path(dtype):
    """Whole toy model, decodes and chunks packed together: the fused layer loop (residual
    stream beside the hidden state, adds inside the norms) gives the torch path's logits."""
    ops = kernels()
    torch.manual_seed(9)
    cfg = dataclasses.replace(CFG, head_dim=64, vocab_size=128)
    with torch.no_grad():
        model = model_mod.LlamaModel(cfg).to(dtype).eval()
        for norm in (m for m in model.modules() if isinstance(m, model_mod.RMSNorm)):
            norm.weight.uniform_(0.5, 1.5)
    model.init_rope(512)
    plan = [(1, 3), (1, 57), (1, 130), (9, 9), (21, 40)]
    tables = _sequences(random.Random(3), [ctx for _, ctx in plan])
    T = sum(q for q, _ in plan)
    input_ids = torch.randint(0, cfg.vocab_size, (T,))
    positions = torch.cat([torch.arange(ctx - q, ctx) for q, ctx in plan])
    pool = torch.randn(cfg.num_layers, 2, NUM_BLOCKS, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim).to(dtype)
    logits = {}
    for paged in (False, True):
        if paged:
            model.use_cpu_kernels(ops)
        caches = pool.clone()
        meta = AttentionMetadata.build(
            [q for q, _ in plan], [c for _, c in plan], tables, BLOCK_SIZE, [0, 1, 2, 12, T - 1], "cpu", paged=paged
        )
        logits[paged] = model(input_ids, positions, [(layer[0], layer[1]) for layer in caches], meta).float()
    tolerance = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    torch.testing.assert_close(logits[True], logits[False], **tolerance)


def test_prefix_merge_equals_one_masked_sdpa():
    torch.manual_seed(3)
    Tq, P, H, KVH, D = 13, 29, 6, 2, 16
    q, k, v = torch.randn(Tq, H, D), torch.randn(Tq, KVH, D), torch.randn(Tq, KVH, D)
    pk, pv = torch.randn(P, KVH, D), torch.randn(P, KVH, D)
    want = _reference(q, torch.cat((pk, k)), torch.cat((pv, v)), torch.arange(P, P + Tq))
    torch.testing.assert_close(attend_with_prefix(q, k, v, pk, pv), want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    not can_prepack(torch.empty(1)), reason="oneDNN prepacked fp32 GEMM is not available in this torch build"
)
def test_prepacked_linear_matches_f_linear_and_traces_as_a_plain_linear():
    torch.manual_seed(4)
    layer = Linear(96, 160, bias=False)
    x = torch.randn(5, 96)
    want = F.linear(x, layer.weight)
    layer.pack()
    assert layer.packed is not None
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), want, atol=1e-4, rtol=1e-5)
    exported = torch.export.export(layer, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("linear" in t for t in targets) and not any("mkldnn" in t for t in targets), targets
