"""The engine loop: schedule a step, run the model, sample, apply stop rules, report per-request outputs.

    add_request -> Scheduler.waiting
    step():  schedule -> runner.execute -> sampler.sample -> update_after_step -> stop checks
             -> [StepOutput per request that got a token or finished]

The engine is single-threaded by design: the serving layer drives it from one thread.
Stop *strings* need text, so the detokenizing caller handles them and ends the
sequence with `finish_request`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.scheduler import Scheduler
from tritonrag.engine.sequence import FinishReason, SampledToken, SchedulerOutput, Sequence, TokenLogprobs
from tritonrag.errors import InvalidInput
from tritonrag.sampling import SamplingParams


class RunnerProtocol(Protocol):
    """Computes one step. Reads `seq.block_table`, `chunk.start`, `chunk.end` of each chunk.

    Returns logits [number of chunks with `chunk.samples`, vocab], rows in chunk order
    (a torch tensor or a numpy array; the engine passes it to the sampler untouched).
    The engine sizes its block pool from `num_kv_blocks` when the runner has it.
    """

    def execute(self, out: SchedulerOutput) -> Any: ...


class SamplerProtocol(Protocol):
    """One token per logits row; `len(seq.output_token_ids)` is the step for seeded sampling.

    A sampler may return bare token ids; one that honours `logprobs` returns SampledTokens.
    """

    def sample(self, logits: Any, seqs: list[Sequence]) -> Seq[int | SampledToken]: ...


@dataclass
class StepOutput:
    """What one step produced for one request.

    `new_token_ids` leaves out the stop token (EOS or a `stop_token_ids` entry) that
    ended the sequence: its text is not part of the output, as in vLLM.
    `num_output_tokens` does count it: the model generated it, and so do `logprobs`
    (one entry per token sampled this step, when the request asked for logprobs) and
    `cumulative_logprob` (their running sum; None when not asked), as in vLLM.
    """

    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    cumulative_logprob: float | None = None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics; token counters are totals since start."""

    num_running: int
    num_waiting: int
    kv_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_steps: int = 0  # steps that computed something
    num_mixed_steps: int = 0  # of those, steps with prefill chunks beside decode rows
    num_partial_prefill_chunks: int = 0  # prefill chunks that stopped short of the sequence's end


@dataclass
class _Totals:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0
    mixed_steps: int = 0
    partial_prefill_chunks: int = 0

    def count_step(self, out: SchedulerOutput) -> None:
        """The step's shape, for metrics that show chunked prefill riding beside running decodes."""
        decodes = sum(chunk.is_decode for chunk in out.chunks)
        self.steps += 1
        self.mixed_steps += 0 < decodes < len(out.chunks)
        self.partial_prefill_chunks += sum(not chunk.samples for chunk in out.chunks)


def _fit_model_len(config: EngineConfig, num_blocks: int) -> tuple[EngineConfig, str | None]:
    """max_model_len no longer than the KV pool holds: a sequence alone must always fit, or a valid
    long request would fail late, mid-generation. Returns the config to use and why it changed."""
    capacity = num_blocks * config.block_size
    if config.max_model_len <= capacity:
        return config, None
    reason = (
        f"max_model_len {config.max_model_len} is more than the KV cache holds ({num_blocks} blocks of "
        f"{config.block_size} = {capacity} tokens): using max_model_len {capacity}"
    )
    return replace(config, max_model_len=capacity), reason


class LLMEngine:
    """Continuous-batching generation over a paged KV cache."""

    def __init__(
        self,
        config: EngineConfig,
        runner: RunnerProtocol,
        sampler: SamplerProtocol,
        tokenizer_eos_ids: Iterable[int] = (),
    ) -> None:
        self.config = config
        self.runner = runner
        self.sampler = sampler
        self.eos_token_ids = frozenset(tokenizer_eos_ids)
        num_blocks = getattr(runner, "num_kv_blocks", 0) or config.num_kv_blocks
        if num_blocks < 1:
            raise ValueError(
                "the number of KV blocks is unknown: set config.num_kv_blocks or give the runner num_kv_blocks"
            )
        self.config, self.clamp_reason = _fit_model_len(config, num_blocks)
        self.scheduler = Scheduler(self.config, num_blocks)
        self._totals = _Totals()

    # ---- requests ------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams) -> None:
        """Queue a request. InvalidInput for a bad prompt, Unavailable when the queue is full."""
        prompt = list(prompt_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 2**63 for t in prompt):
            raise InvalidInput("prompt token ids must be non-negative integers")
        self.scheduler.add(Sequence(request_id, prompt, sampling, eos_token_ids=self.eos_token_ids))

    def abort(self, request_id: str) -> None:
        """Cancel a request wherever it is; its blocks are freed at once. Unknown ids are ignored."""
        self.scheduler.abort(request_id)

    def finish_request(self, request_id: str, reason: FinishReason) -> None:
        """End a request early, e.g. when the caller's detokenizer saw a stop string."""
        seq = self.scheduler.get(request_id)
        if seq is not None:
            self.scheduler.finish(seq, reason)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the loop --------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Run one step; one output per request that got a token or was finished by the engine."""
        out = self.scheduler.schedule()
        sampling_seqs = [chunk.seq for chunk in out.chunks if chunk.samples]
        tokens: list[SampledToken] = []
        if not out.is_empty:
            self._totals.count_step(out)  # before the step moves the chunks' starts
            logits = self.runner.execute(out)
            if sampling_seqs:
                tokens = [_sampled(t) for t in self.sampler.sample(logits, sampling_seqs)]
        if len(tokens) != len(sampling_seqs):
            raise RuntimeError(f"sampler returned {len(tokens)} tokens for {len(sampling_seqs)} sequences")
        sampled = {seq.request_id: token for seq, token in zip(sampling_seqs, tokens)}
        grown = self.scheduler.update_after_step(out, {rid: token.token_id for rid, token in sampled.items()})
        outputs = [self._finish_or_continue(seq, sampled[seq.request_id].logprobs) for seq in grown]
        outputs += [_output(seq, []) for seq in self.scheduler.take_failed()]
        return outputs

    def _finish_or_continue(self, seq: Sequence, logprobs: TokenLogprobs | None) -> StepOutput:
        token = seq.output_token_ids[-1]
        if seq.first_token_time is None:
            seq.first_token_time = time.monotonic()
            self._totals.prompt_tokens += seq.num_prompt_tokens
        self._totals.generation_tokens += 1
        if logprobs is not None:
            seq.cumulative_logprob = (seq.cumulative_logprob or 0.0) + logprobs.logprob
        new_logprobs = [] if logprobs is None else [logprobs]
        reason = self._stop_reason(seq, token)
        if reason is None:
            return _output(seq, [token], new_logprobs)
        self.scheduler.finish(seq, reason)
        return _output(seq, [] if reason is FinishReason.STOP else [token], new_logprobs)

    def _stop_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        """Stop rules on token ids (none before min_tokens); stop strings are the detokenizing caller's job."""
        sampling = seq.sampling
        if token in seq.all_stop_token_ids and len(seq.output_token_ids) > sampling.min_tokens:
            return FinishReason.STOP
        if len(seq.output_token_ids) >= sampling.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH
        return None

    def stats(self) -> EngineStats:
        kv = self.scheduler.kv
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_usage=kv.usage,
            prefix_cache_queries=kv.prefix_cache_queries,
            prefix_cache_hits=kv.prefix_cache_hits,
            num_preemptions=self.scheduler.num_preemptions,
            prompt_tokens_total=self._totals.prompt_tokens,
            generation_tokens_total=self._totals.generation_tokens,
            num_steps=self._totals.steps,
            num_mixed_steps=self._totals.mixed_steps,
            num_partial_prefill_chunks=self._totals.partial_prefill_chunks,
        )


def _sampled(token: int | SampledToken) -> SampledToken:
    return token if isinstance(token, SampledToken) else SampledToken(int(token))


def _output(seq: Sequence, new_token_ids: list[int], logprobs: list[TokenLogprobs] | None = None) -> StepOutput:
    return StepOutput(
        request_id=seq.request_id,
        new_token_ids=new_token_ids,
        finished=seq.is_finished,
        finish_reason=seq.finish_reason,
        num_prompt_tokens=seq.num_prompt_tokens,
        num_cached_tokens=seq.num_cached_tokens,
        num_output_tokens=len(seq.output_token_ids),
        logprobs=logprobs or [],
        cumulative_logprob=seq.cumulative_logprob,
    )
