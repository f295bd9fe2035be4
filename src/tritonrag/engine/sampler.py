"""Sampler: one next token per row of logits, with vLLM's sampling parameters and logprobs.

Per step, for the whole batch, in vLLM v1's order (a stage no row asks for is skipped):

    logits -> fp32 -> min_tokens (mask EOS / stop ids) -> repetition, frequency, presence penalties
           -> greedy rows: argmax
           -> other rows: / temperature -> min_p -> top_k -> top_p -> draw
    logprobs: log_softmax of the fp32 logits as the model gave them (vLLM v1's default
              `raw_logprobs`), for the rows that ask

Every stage works on [rows, vocab] tensors: no Python loop over the vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch

from tritonrag.engine.sequence import SampledToken, Sequence, TokenLogprobs
from tritonrag.sampling import SamplingParams

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, step) over the 64-bit seed space
_NEG_INF = float("-inf")


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
    def sample(self, logits: Any, seqs: list[Sequence]) -> list[SampledToken]:
        raw = torch.as_tensor(logits).float()  # [N, V]; a numpy array from onnxruntime works too
        processed = self.process(raw, seqs)
        tokens = processed.argmax(dim=-1)  # [N]
        rows = [i for i, seq in enumerate(seqs) if not seq.sampling.greedy]
        if rows:
            probs = processed[rows].softmax(dim=-1)  # [R, V]
            noise = torch.stack([self._exponential(seqs[i], probs.shape[1]) for i in rows]).to(probs.device)
            tokens[rows] = (probs / noise).argmax(dim=-1)
        logprobs = _logprobs(raw, seqs, tokens)
        return [SampledToken(token, lp) for token, lp in zip(tokens.tolist(), logprobs)]

    @staticmethod
    @torch.inference_mode()
    def process(logits: Any, seqs: list[Sequence]) -> torch.Tensor:
        """The logits tokens are drawn from: greedy rows take their argmax, the others sample their softmax.

        Greedy rows carry min_tokens and the penalties; the other rows are also divided by
        their temperature and hold -inf where min_p, top_k or top_p cut. The input is not modified.
        """
        processed = torch.as_tensor(logits).float()  # [N, V]
        processed = _mask_stop_tokens(processed, seqs)
        processed = _apply_penalties(processed, seqs)
        rows = [i for i, seq in enumerate(seqs) if not seq.sampling.greedy]
        if rows:
            index = torch.tensor(rows, device=processed.device)
            warped = _warp(processed[index], [seqs[i].sampling for i in rows])
            processed = processed.index_put((index,), warped)
        return processed

    def _exponential(self, seq: Sequence, vocab: int) -> torch.Tensor:
        """Exp(1) noise [V] from the request's (seed, step) generator, or the shared one."""
        generator = self.generator
        if seq.sampling.seed is not None:
            step = len(seq.output_token_ids)
            generator = torch.Generator().manual_seed((seq.sampling.seed * _SEED_MIX + step) % 2**64)
        return torch.empty(vocab).exponential_(generator=generator).clamp_min_(1e-20)  # 0 would divide to inf


def _mask_stop_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """min_tokens: until a sequence has that many outputs, its EOS and stop token ids get -inf."""
    vocab = logits.shape[1]
    rows: list[int] = []
    cols: list[int] = []
    for i, seq in enumerate(seqs):
        if len(seq.output_token_ids) < seq.sampling.min_tokens:
            ids = [t for t in seq.all_stop_token_ids if t < vocab]
            rows += [i] * len(ids)
            cols += ids
    if not rows:
        return logits
    index = (torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device))
    return logits.index_put(index, torch.tensor(_NEG_INF, device=logits.device))


def _apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """vLLM's penalties: repetition over prompt + output tokens, then frequency and presence over output tokens.

    repetition_penalty r divides a seen token's positive logit by r and multiplies a negative
    one by r (HF's RepetitionPenaltyLogitsProcessor); frequency subtracts f * count, presence p once.
    Only the (row, token) pairs that occur are touched: the cost follows the tokens, not the vocabulary.
    """
    rows = [i for i, seq in enumerate(seqs) if seq.sampling.has_penalties]
    if not rows:
        return logits
    out = logits.clone()
    repeated = [i for i in rows if seqs[i].sampling.repetition_penalty != 1]
    if repeated:
        row, col, _ = _occurrences([seqs[i].all_token_ids for i in repeated], repeated, out)
        penalty = _per_row([seqs[i].sampling.repetition_penalty for i in repeated], repeated, row, out)
        values = out[row, col]
        out[row, col] = torch.where(values > 0, values / penalty, values * penalty)
    row, col, count = _occurrences([seqs[i].output_token_ids for i in rows], rows, out)
    if len(row):
        frequency = _per_row([seqs[i].sampling.frequency_penalty for i in rows], rows, row, out)
        presence = _per_row([seqs[i].sampling.presence_penalty for i in rows], rows, row, out)
        out[row, col] -= frequency * count + presence
    return out


def _occurrences(
    token_lists: list[list[int]], rows: list[int], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each distinct (row, token id) pair of the lists, with its count; ids outside the vocabulary are left out."""
    vocab = like.shape[1]
    flat = torch.tensor([t for tokens in token_lists for t in tokens], dtype=torch.long)
    row = torch.tensor(rows, dtype=torch.long).repeat_interleave(torch.tensor([len(t) for t in token_lists]))
    inside = flat < vocab
    keys, counts = torch.unique(row[inside] * vocab + flat[inside], return_counts=True)
    device = like.device
    return (keys // vocab).to(device), (keys % vocab).to(device), counts.to(device=device, dtype=torch.float32)


def _per_row(values: list[float], rows: list[int], row: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The value of each pair's row: `values[k]` belongs to batch row `rows[k]`."""
    table = torch.zeros(like.shape[0], dtype=torch.float32, device=like.device)
    table[torch.tensor(rows, device=like.device)] = torch.tensor(values, dtype=torch.float32, device=like.device)
    return table[row]


def _warp(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Divide by temperature, then -inf outside min_p, top_k and top_p (vLLM's order)."""
    # logits: [R, V]
    logits = logits / _column([p.temperature for p in params], logits)
    if any(p.min_p > 0 for p in params):
        probs = logits.softmax(dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * _column([p.min_p for p in params], logits)
        logits = logits.masked_fill(probs < threshold, _NEG_INF)
    if any(p.top_k > 0 or p.top_p < 1 for p in params):
        logits = _top_k_top_p(logits, params)
    return logits


def _top_k_top_p(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Keep each row's top_k tokens, then the smallest set of them whose mass reaches top_p."""
    # logits: [R, V]
    vocab = logits.shape[1]
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=logits.device)
    top_p = _column([p.top_p for p in params], logits)
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    cut = ranks >= top_k[:, None]
    probs = sorted_logits.masked_fill(cut, _NEG_INF).softmax(dim=-1)
    # drop a token once the mass before it already reaches top_p (the first token always stays)
    cut |= ((probs.cumsum(dim=-1) - probs) >= top_p) & (top_p < 1)
    sorted_logits = sorted_logits.masked_fill(cut, _NEG_INF)
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _logprobs(raw: torch.Tensor, seqs: list[Sequence], tokens: torch.Tensor) -> list[TokenLogprobs | None]:
    """Each asking row's sampled-token logprob and rank, and its top-`logprobs` alternatives."""
    rows = [i for i, seq in enumerate(seqs) if seq.sampling.logprobs is not None]
    out: list[TokenLogprobs | None] = [None] * len(seqs)
    if not rows:
        return out
    index = torch.tensor(rows, device=raw.device)
    logprobs = raw[index].log_softmax(dim=-1)  # [R, V]
    chosen = logprobs.gather(1, tokens[index][:, None])  # [R, 1]
    ranks = ((logprobs > chosen).sum(dim=-1) + 1).tolist()
    wanted = [seqs[i].sampling.logprobs or 0 for i in rows]
    top_values, top_ids = logprobs.topk(min(max(wanted), logprobs.shape[1]), dim=-1)  # [R, K]
    top_values_list, top_ids_list, chosen_list = top_values.tolist(), top_ids.tolist(), chosen[:, 0].tolist()
    token_ids = tokens[index].tolist()
    for r, i in enumerate(rows):
        top = tuple(zip(top_ids_list[r][: wanted[r]], top_values_list[r][: wanted[r]]))
        out[i] = TokenLogprobs(token_ids[r], chosen_list[r], ranks[r], top)
    return out


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """[R, 1] float32 on `like`'s device, to broadcast one value per row."""
    return torch.tensor(values, dtype=torch.float32, device=like.device)[:, None]
