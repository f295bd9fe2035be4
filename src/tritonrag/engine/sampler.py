"""Sampler: one next token per row of logits, greedy or temperature / top-k / top-p."""

from __future__ import annotations

import torch

from tritonrag.engine.sequence import Sequence

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, step) over the 64-bit seed space


class Sampler:
    """Greedy rows take argmax; the others sample with the Gumbel / exponential trick.

    Drawing token argmax(p / E) with E ~ Exp(1) per vocabulary entry samples from p.
    A request with a seed draws E from its own generator seeded by (seed, step), so
    its tokens do not depend on which other requests share the batch.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        # logits: [N, V] float32, one row per sequence
        tokens = logits.argmax(dim=-1)  # [N]
        rows = [i for i, seq in enumerate(seqs) if not seq.sampling.greedy]
        if rows:
            probs = self._probs(logits[rows], [seqs[i] for i in rows])  # [R, V]
            noise = torch.stack([self._exponential(seqs[i], probs.shape[1]) for i in rows]).to(probs.device)
            tokens[rows] = (probs / noise).argmax(dim=-1)
        return tokens.tolist()

    @staticmethod
    def _probs(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Softmax of logits / temperature restricted to each row's top-k and top-p set."""
        # logits: [R, V]
        params = [seq.sampling for seq in seqs]
        V = logits.shape[1]
        temperature = torch.tensor([p.temperature for p in params], device=logits.device)
        top_k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], device=logits.device)
        top_p = torch.tensor([p.top_p for p in params], device=logits.device)
        sorted_logits, order = (logits / temperature[:, None]).sort(dim=-1, descending=True, stable=True)
        ranks = torch.arange(V, device=logits.device)[None, :]
        cut = ranks >= top_k[:, None]
        probs = sorted_logits.masked_fill(cut, float("-inf")).softmax(dim=-1)
        # drop a token once the mass before it already reaches top_p (the first token always stays)
        cut |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
        sorted_logits = sorted_logits.masked_fill(cut, float("-inf"))
        return torch.empty_like(logits).scatter_(1, order, sorted_logits).softmax(dim=-1)

    def _exponential(self, seq: Sequence, vocab: int) -> torch.Tensor:
        """Exp(1) noise [V] from the request's (seed, step) generator, or the shared one."""
        generator = self.generator
        if seq.sampling.seed is not None:
            step = len(seq.output_token_ids)
            generator = torch.Generator().manual_seed((seq.sampling.seed * _SEED_MIX + step) % 2**64)
        return torch.empty(vocab).exponential_(generator=generator).clamp_min_(1e-20)  # 0 would divide to inf
