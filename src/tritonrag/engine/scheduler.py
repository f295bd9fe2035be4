"""Token-level continuous batching: decides which tokens of which sequences each step computes.

One step has a budget of `max_num_batched_tokens` tokens and at most `max_num_seqs`
running sequences. Running sequences are served first, oldest first (a decode takes
one token, a sequence still in chunked prefill takes the next chunk); what is left
admits waiting sequences first come, first served. A prompt longer than the leftover
budget is split over steps (chunked prefill), so it never stalls the running decodes.

With `prefill_order="shortest"` the decodes still go first, then every prompt with
tokens left to prefill, running or waiting, is ranked by how many it has left, fewest
first: under a burst of RAG prompts a short question's first token no longer waits for
every longer prompt that came before it. The fairness rule: a prompt that arrived more
than `prefill_starvation_s` ago, or was preempted, ranks ahead of all others, oldest
first, so a long prompt waits at most that long behind shorter ones.

When KV blocks run out, the most recently admitted running sequence is preempted in
recompute mode: its blocks are freed, and it goes back to the front of the waiting
queue to be prefilled again later (its own freed blocks are often still prefix hits).
"""

from __future__ import annotations

import logging
import time
from collections import deque

from tritonrag.defaults import PREFILL_SHORTEST
from tritonrag.engine.config import EngineConfig
from tritonrag.engine.kv_cache_manager import KVCacheManager
from tritonrag.engine.sequence import FinishReason, ScheduledChunk, SchedulerOutput, Sequence, SequenceStatus
from tritonrag.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)


class Scheduler:
    """Owns the waiting queue, the running list and the KV cache manager."""

    def __init__(self, config: EngineConfig, num_blocks: int) -> None:
        self.config = config
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the tail is preempted first
        self._seqs: dict[str, Sequence] = {}  # every unfinished sequence by request id
        self._failed: list[Sequence] = []  # finished with ERROR by the scheduler, not yet reported
        self.num_preemptions = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._failed)

    def get(self, request_id: str) -> Sequence | None:
        return self._seqs.get(request_id)

    # ---- requests in and out -------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; InvalidInput if it can never run, Unavailable if the queue is full."""
        self._validate(seq)
        if len(self.waiting) >= self.config.max_waiting:
            raise Unavailable(
                f"the generator's waiting queue is full ({self.config.max_waiting} requests); retry later"
            )
        seq.status = SequenceStatus.WAITING
        self._seqs[seq.request_id] = seq
        self.waiting.append(seq)

    def _validate(self, seq: Sequence) -> None:
        if seq.request_id in self._seqs:
            raise InvalidInput(f"request id {seq.request_id!r} is already in flight")
        if seq.status is not SequenceStatus.WAITING or seq.num_computed_tokens or seq.block_table:
            raise InvalidInput(f"request {seq.request_id!r} is not a fresh sequence")
        num_prompt, max_len = seq.num_prompt_tokens, self.config.max_model_len
        if num_prompt < 1:
            raise InvalidInput("the prompt is empty")
        if num_prompt > max_len - 1:
            raise InvalidInput(f"prompt is {num_prompt} tokens; the limit is {max_len - 1} (max_model_len {max_len})")
        if self.kv.blocks_needed(num_prompt) > self.kv.num_blocks:
            raise InvalidInput(
                f"prompt is {num_prompt} tokens, more than the whole KV cache holds "
                f"({self.kv.num_blocks} blocks of {self.kv.block_size})"
            )

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End `seq` now: its blocks go back to the pool at once."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.kv.free(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        self._seqs.pop(seq.request_id, None)

    def abort(self, request_id: str) -> Sequence | None:
        """Cancel a waiting or running request; unknown or finished ids are ignored."""
        seq = self._seqs.get(request_id)
        if seq is not None:
            self.finish(seq, FinishReason.ABORT)
        return seq

    def take_failed(self) -> list[Sequence]:
        """Sequences the scheduler ended with ERROR since the last call, for the engine to report."""
        failed, self._failed = self._failed, []
        return failed

    # ---- one step ------------------------------------------------------------------
    def schedule(self, now: float | None = None) -> SchedulerOutput:
        """Pick this step's chunks; every chunk's block table covers `chunk.end` on return."""
        out = SchedulerOutput()
        shortest = self.config.prefill_order == PREFILL_SHORTEST
        budget = self._schedule_running(out, self.config.max_num_batched_tokens, decodes_only=shortest)
        if out.preempted:  # blocks are short: let the running ones drain first
            return out
        if shortest:
            self._schedule_prefills(out, budget, time.monotonic() if now is None else now)
        else:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int, decodes_only: bool = False) -> int:
        """Give each running sequence (oldest first) its next chunk; return the budget left."""
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_left = seq.num_uncomputed_tokens
            if num_left < 1:
                raise RuntimeError(f"{seq.request_id}: running with nothing to compute")
            if decodes_only and num_left > 1:
                i += 1  # a prompt still in prefill: ranked with the waiting ones
                continue
            num_new = min(num_left, budget)
            if not self._reserve(seq, num_new, out):
                if seq.is_finished:
                    continue  # failed: it left the list, running[i] is the next one
                break  # preempted itself: it was the last running one
            out.chunks.append(ScheduledChunk(seq, num_new))
            budget -= num_new
            i += 1
        return budget

    def _reserve(self, seq: Sequence, num_new: int, out: SchedulerOutput) -> bool:
        """Allocate slots for a running sequence, preempting from the tail until they fit."""
        if not self._fits_pool(seq, seq.num_computed_tokens + num_new):
            return False
        while not self.kv.allocate_slots(seq, num_new):
            victim = self.running[-1]
            if victim is seq and len(self.running) == 1:  # unreachable after _fits_pool; no livelock
                self._fail(seq, "cannot get blocks with the pool to itself")
                return False
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        """Admit waiting sequences in order while the budget, max_num_seqs and blocks allow."""
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            chunk = self._admit(seq, budget)
            if chunk is None:
                if seq.is_finished:
                    continue
                break
            out.chunks.append(chunk)
            budget -= chunk.num_new_tokens

    def _schedule_prefills(self, out: SchedulerOutput, budget: int, now: float) -> None:
        """Shortest-first prefill. Starved prompts go first, oldest first, but while others wait take at most
        `prefill_starved_share` of the budget: a short prompt is not queued behind a whole starved backlog."""
        pending = [seq for seq in self.running if seq.num_uncomputed_tokens > 1]
        starved: list[Sequence] = []
        fresh: list[Sequence] = []
        for seq in [*pending, *self.waiting]:
            (starved if self._is_starved(seq, now) else fresh).append(seq)
        starved.sort(key=lambda seq: seq.arrival_time)
        fresh.sort(key=lambda seq: (seq.num_uncomputed_tokens, seq.arrival_time))
        # Kept for the fresh prompts: their share of the budget, or less if they need less.
        reserve = min(
            sum(seq.num_uncomputed_tokens for seq in fresh), budget - int(budget * self.config.prefill_starved_share)
        )
        left, blocked = self._fill_prefills(out, starved, budget - reserve)
        if not blocked:  # blocks are short: what runs drains first, nothing newer is admitted
            budget, _ = self._fill_prefills(out, fresh, left + reserve)
        if not out.chunks and self.running:  # nothing fit: arrival order, which preempts, makes progress
            self._schedule_running(out, budget)

    def _fill_prefills(self, out: SchedulerOutput, seqs: list[Sequence], budget: int) -> tuple[int, bool]:
        """`seqs`' next prefill chunks, in order, within `budget`: (budget left, whether blocks ran short)."""
        for seq in seqs:
            if budget <= 0:
                break
            if seq.status is SequenceStatus.RUNNING:
                chunk = self._next_prefill_chunk(seq, budget)
            elif len(self.running) < self.config.max_num_seqs:
                chunk = self._admit(seq, budget)
            else:
                continue  # no room to admit; running prompts further down may still use the budget
            if chunk is None:
                if seq.is_finished:
                    continue
                return budget, True
            out.chunks.append(chunk)
            budget -= chunk.num_new_tokens
        return budget, False

    def _is_starved(self, seq: Sequence, now: float) -> bool:
        return bool(seq.num_preemptions) or now - seq.arrival_time >= self.config.prefill_starvation_s

    def _next_prefill_chunk(self, seq: Sequence, budget: int) -> ScheduledChunk | None:
        """A running prompt's next chunk, without preempting (a chunk scheduled earlier this step could be
        the victim)."""
        num_new = min(seq.num_uncomputed_tokens, budget)
        if not self._fits_pool(seq, seq.num_computed_tokens + num_new) or not self.kv.allocate_slots(seq, num_new):
            return None
        return ScheduledChunk(seq, num_new)

    def _admit(self, seq: Sequence, budget: int) -> ScheduledChunk | None:
        """Move the head of the waiting queue to running, skipping its prefix-cache hits."""
        if not self._fits_pool(seq, seq.num_tokens):
            return None
        hits, num_cached = self.kv.get_computed_blocks(seq)
        num_new = seq.num_tokens - num_cached
        if num_new > budget and not self.config.enable_chunked_prefill:
            return None
        num_new = min(num_new, budget)
        if not self.kv.allocate_slots(seq, num_new, hits):
            if not self.running:  # unreachable after _fits_pool; no livelock
                self._fail(seq, "cannot get blocks with the pool to itself")
            return None
        self.waiting.remove(seq)  # the head, except in shortest-first order
        seq.status = SequenceStatus.RUNNING
        seq.num_computed_tokens = num_cached
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = min(num_cached, seq.num_prompt_tokens)
        self.running.append(seq)
        return ScheduledChunk(seq, num_new)

    def _fits_pool(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether `num_tokens` of `seq` fit the whole pool; if not, it can never run: fail it."""
        if self.kv.blocks_needed(num_tokens) <= self.kv.num_blocks:
            return True
        self._fail(seq, f"needs more than the {self.kv.num_blocks} KV blocks of the pool for {num_tokens} tokens")
        return False

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        """Recompute-mode preemption: free the blocks, forget the progress, wait at the front."""
        self.running.remove(seq)
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        log.debug("preempted %s (%d tokens)", seq.request_id, seq.num_tokens)

    def _fail(self, seq: Sequence, why: str) -> None:
        log.warning("request %s failed: it %s", seq.request_id, why)
        self.finish(seq, FinishReason.ERROR)
        self._failed.append(seq)

    # ---- after the model ran -------------------------------------------------------
    def update_after_step(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Sequence]:
        """Advance each chunk's sequence, append its sampled token, cache newly full blocks.

        `sampled` maps request id to token for exactly the chunks that sample. Returns
        the sequences that got a new token, in chunk order.
        """
        expected = {chunk.seq.request_id for chunk in out.chunks if chunk.samples}
        if set(sampled) != expected:
            raise ValueError(f"sampled tokens for {sorted(sampled)}, expected {sorted(expected)}")
        grown = []
        for chunk in out.chunks:
            seq, samples = chunk.seq, chunk.samples  # read `samples` before advancing
            if seq.is_finished:
                continue
            seq.num_computed_tokens += chunk.num_new_tokens
            if samples:
                seq.output_token_ids.append(sampled[seq.request_id])
                grown.append(seq)
            self.kv.cache_full_blocks(seq)
        return grown

    def check_integrity(self) -> None:
        """Raise RuntimeError if the block accounting or the queues are inconsistent."""
        self.kv.check_integrity(self.running)
        if any(seq.block_table for seq in self.waiting):
            raise RuntimeError("a waiting sequence holds blocks")
        live = {seq.request_id for seq in self.running} | {seq.request_id for seq in self.waiting}
        if live != set(self._seqs) or len(self.running) + len(self.waiting) != len(self._seqs):
            raise RuntimeError("the running and waiting queues disagree with the sequence map")
        if len(self.running) > self.config.max_num_seqs:
            raise RuntimeError(f"{len(self.running)} running sequences > max_num_seqs {self.config.max_num_seqs}")
