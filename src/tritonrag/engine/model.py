"""Llama decoder in plain torch over a paged KV cache, for a packed batch of sequences.

One forward computes a flat batch of T tokens taken from several sequences (prefill
chunks and decodes side by side, no padding). Every linear layer runs once over all
T tokens; only attention looks at sequences, through `AttentionMetadata`:

    packed rows:  [ d0 d1 ... d(B-1) | p0 p0 p0 p0 | p1 p1 p1 ]
                    single-query seqs   prefill chunk 0   chunk 1
                    (one batched SDPA)  (one SDPA each, causal offset mask)

Keys and values are written to the cache at `slot_mapping` (slot = block * block_size
+ offset) before attention, then read back through each sequence's block table, so a
chunk that starts mid-sequence (prefix-cache hit, chunked prefill) sees its context.
Numerics follow Hugging Face's LlamaForCausalLM (RMSNorm in fp32, rotate_half RoPE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


@dataclass(frozen=True)
class LlamaConfig:
    """The fields of a Hugging Face Llama config.json that the decoder needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    @classmethod
    def from_dict(cls, raw: dict) -> "LlamaConfig":
        rope = raw.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default" or raw.get("rope_scaling"):
            raise ValueError(f"only default RoPE is supported, got {rope or raw.get('rope_scaling')}")
        num_heads = raw["num_attention_heads"]
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // num_heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", raw.get("rope_theta", 10000.0)),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "LlamaConfig":
        return cls.from_dict(json.loads((Path(model_dir) / "config.json").read_text()))


@dataclass
class PrefillMeta:
    """One multi-token chunk: packed rows [q_start, q_end) attend to positions [0, context_len)."""

    q_start: int
    q_end: int
    context_len: int
    block_ids: torch.Tensor        # [ceil(context_len / block_size)] int64
    mask: torch.Tensor | None      # [q_len, context_len] bool, True = attend; None = plain causal


@dataclass
class AttentionMetadata:
    """How the packed batch maps onto sequences and the paged cache; built once per step.

    The first `num_decodes` packed rows are single-query sequences; the rest are the
    prefill chunks, in order. `logits_indices` are the packed rows to compute logits for.
    """

    slot_mapping: torch.Tensor                 # [T] int64
    num_decodes: int
    decode_block_tables: torch.Tensor | None   # [B, max_blocks] int64, padded with 0
    decode_mask: torch.Tensor | None           # [B, 1, 1, max_blocks * block_size] bool
    prefills: list[PrefillMeta]
    logits_indices: torch.Tensor               # [N] int64

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        logits_indices: list[int],
        device: torch.device | str = "cpu",
    ) -> "AttentionMetadata":
        """Metadata for sequences packed in this order: all single-query ones first.

        Sequence i contributes `query_lens[i]` rows for positions
        [context_lens[i] - query_lens[i], context_lens[i]); its block table covers them.
        """
        num_decodes = sum(1 for q in query_lens if q == 1)
        if any(q != 1 for q in query_lens[:num_decodes]) or any(q < 1 for q in query_lens):
            raise ValueError("single-query sequences must come first and every query must be non-empty")
        slots = [
            slot
            for q_len, ctx, table in zip(query_lens, context_lens, block_tables)
            for slot in _slots(table, ctx - q_len, ctx, block_size)
        ]
        slot_mapping = torch.tensor(slots, dtype=torch.long, device=device)
        meta = cls(slot_mapping, num_decodes, None, None, [], torch.tensor(logits_indices, dtype=torch.long, device=device))
        if num_decodes:
            meta.decode_block_tables, meta.decode_mask = _decode_tables(
                block_tables[:num_decodes], context_lens[:num_decodes], block_size, device
            )
        row = num_decodes
        for q_len, ctx, table in zip(query_lens[num_decodes:], context_lens[num_decodes:], block_tables[num_decodes:]):
            num_blocks = -(-ctx // block_size)
            block_ids = torch.tensor(table[:num_blocks], dtype=torch.long, device=device)
            meta.prefills.append(PrefillMeta(row, row + q_len, ctx, block_ids, _causal_mask(q_len, ctx, device)))
            row += q_len
        return meta


def _slots(table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Physical cache slots of positions [start, end): block * block_size + offset."""
    return [table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def _decode_tables(tables: list[list[int]], context_lens: list[int], block_size: int, device):
    """Block tables padded to the longest [B, NB] and the key mask [B, 1, 1, NB * block_size]."""
    width = max(-(-ctx // block_size) for ctx in context_lens)
    padded = [t[:width] + [0] * (width - min(len(t), width)) for t in tables]
    block_tables = torch.tensor(padded, dtype=torch.long, device=device)                 # [B, NB]
    lens = torch.tensor(context_lens, device=device)
    mask = torch.arange(width * block_size, device=device)[None, :] < lens[:, None]    # [B, L]
    return block_tables, mask[:, None, None, :]


def _causal_mask(q_len: int, context_len: int, device) -> torch.Tensor | None:
    """Query i sits at position context_len - q_len + i and sees keys at positions <= its own."""
    if q_len == context_len:
        return None
    q_pos = torch.arange(context_len - q_len, context_len, device=device)
    return torch.arange(context_len, device=device)[None, :] <= q_pos[:, None]


def rope_table(head_dim: int, theta: float, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [max_positions, head_dim] in fp32, computed exactly as HF's LlamaRotaryEmbedding."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.arange(max_positions).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos, sin: [T, 1, D]. rotate_half convention (first half, second half)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    """GQA self-attention: fused QKV projection, RoPE, paged KV write and read."""

    def __init__(self, cfg: LlamaConfig, scratch: "GatherScratch") -> None:
        super().__init__()
        self.scratch = scratch
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.group = cfg.num_heads // cfg.num_kv_heads
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=False)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        # x: [T, hidden]; cos, sin: [T, 1, D]; k_cache, v_cache: [num_blocks, block_size, KVH, D]
        T, H, KVH, D = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(x)                                       # [T, (H + 2 KVH) D]
        qk = apply_rope(qkv[:, : (H + KVH) * D].view(T, H + KVH, D), cos, sin)
        q, k = qk[:, :H], qk[:, H:]                                  # [T, H, D], [T, KVH, D]
        v = qkv[:, (H + KVH) * D :].view(T, KVH, D)
        k_cache.view(-1, KVH, D).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, KVH, D).index_copy_(0, meta.slot_mapping, v)
        outs = []
        if meta.num_decodes:
            outs.append(self._decode(q[: meta.num_decodes], k_cache, v_cache, meta))
        for p in meta.prefills:
            outs.append(self._prefill(q[p.q_start : p.q_end], k_cache, v_cache, p))
        o = outs[0] if len(outs) == 1 else torch.cat(outs)          # [T, H D]
        return self.o_proj(o)

    def _decode(self, q, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        # q: [B, H, D] -> one SDPA over keys gathered into [B, KVH, L, D], L = max_blocks * block_size
        B, KVH, D = q.shape[0], self.num_kv_heads, self.head_dim
        k, v = self.scratch.gather(k_cache, v_cache, meta.decode_block_tables)   # [B, L, KVH, D]
        q = q.view(B, KVH, self.group, D)                            # query heads of one KV head side by side
        o = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=meta.decode_mask)
        return o.reshape(B, -1)

    def _prefill(self, q, k_cache, v_cache, p: PrefillMeta) -> torch.Tensor:
        # q: [Tq, H, D]; keys and values of positions [0, context_len): [C, KVH, D]
        k, v = self.scratch.gather(k_cache, v_cache, p.block_ids[None])
        k, v = k[:, : p.context_len], v[:, : p.context_len]
        # 4-D [1, heads, len, D] inputs take torch's flash kernel on CPU (3-D falls back to the math path)
        o = F.scaled_dot_product_attention(
            q[None].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=p.mask, is_causal=p.mask is None, enable_gqa=True,
        )                                                            # [1, H, Tq, D]
        return o[0].transpose(0, 1).reshape(q.shape[0], -1)


class GatherScratch:
    """Reusable memory for keys and values gathered through block tables.

    The decode gather is several MB per layer; a fresh allocation each time costs
    page faults (glibc serves it with mmap), which doubled step latency on CPU.
    One buffer, grown on demand and shared by all layers, avoids that.
    """

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def gather(self, k_cache, v_cache, block_tables) -> tuple[torch.Tensor, torch.Tensor]:
        """caches [num_blocks, bs, KVH, D], block_tables [B, NB] -> K and V [B, NB * bs, KVH, D]."""
        num_blocks, bs, kvh, d = k_cache.shape
        B, nb = block_tables.shape
        numel = B * nb * bs * kvh * d
        buf = self._buf
        if buf is None or buf.numel() < 2 * numel or buf.dtype != k_cache.dtype or buf.device != k_cache.device:
            buf = self._buf = torch.empty(2 * numel, dtype=k_cache.dtype, device=k_cache.device)
        index = block_tables.reshape(-1)
        k, v = buf[:numel].view(B * nb, -1), buf[numel : 2 * numel].view(B * nb, -1)
        torch.index_select(k_cache.view(num_blocks, -1), 0, index, out=k)
        torch.index_select(v_cache.view(num_blocks, -1), 0, index, out=v)
        return k.view(B, nb * bs, kvh, d), v.view(B, nb * bs, kvh, d)


class MLP(nn.Module):
    """SwiGLU with the gate and up projections fused into one matmul."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, scratch: GatherScratch) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, scratch)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Embeddings, decoder layers, final norm and (tied) lm_head, over a packed batch."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.scratch = GatherScratch()
        self.layers = nn.ModuleList(DecoderLayer(cfg, self.scratch) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rope_cos: torch.Tensor | None = None   # [max_positions, D], set by init_rope
        self.rope_sin: torch.Tensor | None = None

    def init_rope(self, max_positions: int) -> None:
        cos, sin = rope_table(self.config.head_dim, self.config.rope_theta, max_positions)
        dtype, device = self.embed_tokens.weight.dtype, self.embed_tokens.weight.device
        self.rope_cos, self.rope_sin = cos.to(device, dtype), sin.to(device, dtype)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,                        # [T]
        positions: torch.Tensor,                        # [T]
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Logits [N, vocab] (model dtype) for the packed rows `meta.logits_indices`."""
        cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]   # [T, 1, D]
        x = self.embed_tokens(input_ids)                                                  # [T, hidden]
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches):
            x = layer(x, cos, sin, k_cache, v_cache, meta)
        x = self.norm(x[meta.logits_indices])                                            # [N, hidden]
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, weight)                                                        # [N, vocab]


def load_llama(
    model_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_positions: int | None = None,
) -> LlamaModel:
    """Build the decoder from a Hugging Face Llama checkpoint (config.json + *.safetensors)."""
    model_dir = Path(model_dir)
    cfg = LlamaConfig.from_dir(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    hf: dict[str, torch.Tensor] = {}
    for f in files:
        hf.update(load_file(f))
    with torch.device("meta"):
        model = LlamaModel(cfg)
    state = _fuse_weights(hf, cfg)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
    model.init_rope(max(max_positions or 0, cfg.max_position_embeddings))
    return model.eval()


def _fuse_weights(hf: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Hugging Face names -> ours: drop the `model.` prefix, fuse q/k/v and gate/up."""
    state = {k.removeprefix("model."): v for k, v in hf.items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        state[p + "self_attn.qkv_proj.weight"] = torch.cat([state.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        state[p + "mlp.gate_up_proj.weight"] = torch.cat([state.pop(p + f"mlp.{n}_proj.weight") for n in ("gate", "up")])
    return state
