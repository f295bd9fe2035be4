"""Shared fixtures for the engine-core tests: toy sequences, invariant checks, a fake model that reads through block tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.llm_engine import LLMEngine, StepOutput
from tritonrag.engine.scheduler import Scheduler
from tritonrag.engine.sequence import FinishReason, SchedulerOutput, Sequence
from tritonrag.sampling import SamplingParams

VOCAB = 101


def new_seq(request_id: str, prompt: list[int], max_tokens: int = 16, **sampling) -> Sequence:
    return Sequence(request_id, list(prompt), SamplingParams(max_tokens=max_tokens, **sampling))


def check_scheduler(sched: Scheduler) -> None:
    """Accounting is consistent and no two running sequences share a block either may still write."""
    sched.check_integrity()
    bs = sched.kv.block_size
    for seq in sched.running:
        for index in range(seq.num_computed_tokens // bs, len(seq.block_table)):
            block = sched.kv.pool.blocks[seq.block_table[index]]
            assert block.ref_count == 1, f"{seq.request_id} writes into shared block {block.block_id}"
            assert block.block_hash is None, f"{seq.request_id} writes into cached block {block.block_id}"


def check_all_free(sched: Scheduler) -> None:
    """Every block is back in the pool and nothing is left queued."""
    check_scheduler(sched)
    assert not sched.running and not sched.waiting
    assert sched.kv.num_free_blocks == sched.kv.num_blocks
    assert sched.kv.usage == 0.0


@dataclass
class StepRecord:
    """One scheduler step as it was planned (chunk starts move once the step is applied)."""

    chunks: dict[str, tuple[int, int]]  # request_id -> (start, num_new_tokens)
    sampled: list[str]  # request ids of the chunks that sampled
    preempted: list[Sequence]
    num_batched_tokens: int


def scheduler_step(sched: Scheduler, token: int = 7) -> StepRecord:
    """One step without a model: every sampling chunk gets `token`; max_tokens ends a sequence."""
    out = sched.schedule()
    check_scheduler(sched)
    record = StepRecord(
        chunks={c.seq.request_id: (c.start, c.num_new_tokens) for c in out.chunks},
        sampled=[c.seq.request_id for c in out.chunks if c.samples],
        preempted=list(out.preempted),
        num_batched_tokens=out.num_batched_tokens,
    )
    assert len(record.chunks) == len(out.chunks), "a sequence was scheduled twice in one step"
    for seq in sched.update_after_step(out, {request_id: token for request_id in record.sampled}):
        if len(seq.output_token_ids) >= seq.sampling.max_tokens:
            sched.finish(seq, FinishReason.LENGTH)
    check_scheduler(sched)
    return record


# ---- a fake model that only answers right if the block tables are right ----------------
def next_token(context: list[int]) -> int:
    """The fake model: a position-weighted checksum of the whole context."""
    return (sum((i + 1) * t for i, t in enumerate(context)) * 7 + 3) % VOCAB


class FakeRunner:
    """Writes each chunk's token ids into a paged 'KV cache' and predicts from what it reads back.

    Slot = block_id * block_size + offset, as in the real runner. A wrong block table, a
    prefix hit on the wrong block, or two sequences writing one block change the answer
    (or raise KeyError on a slot never written).
    """

    def __init__(self, num_kv_blocks: int, block_size: int) -> None:
        self.num_kv_blocks = num_kv_blocks
        self.block_size = block_size
        self.kv: dict[int, int] = {}
        self.steps: list[list[tuple[str, int, int]]] = []  # (request_id, start, num_new) per chunk

    def slot(self, seq: Sequence, pos: int) -> int:
        block_id = seq.block_table[pos // self.block_size]
        if not 0 <= block_id < self.num_kv_blocks:
            raise IndexError(f"block id {block_id} outside the cache")
        return block_id * self.block_size + pos % self.block_size

    def execute(self, out: SchedulerOutput) -> list[list[float]]:
        self.steps.append([(c.seq.request_id, c.start, c.num_new_tokens) for c in out.chunks])
        for chunk in out.chunks:
            if len(chunk.seq.block_table) * self.block_size < chunk.end:
                raise IndexError(f"{chunk.seq.request_id}: block table does not cover {chunk.end} tokens")
            for pos in range(chunk.start, chunk.end):
                self.kv[self.slot(chunk.seq, pos)] = chunk.seq.all_token_ids[pos]
        rows = []
        for chunk in out.chunks:
            if chunk.samples:
                context = [self.kv[self.slot(chunk.seq, pos)] for pos in range(chunk.end)]
                row = [0.0] * VOCAB
                row[next_token(context)] = 1.0
                rows.append(row)
        return rows


class ArgmaxSampler:
    def __init__(self) -> None:
        self.steps_seen: list[list[int]] = []

    def sample(self, logits: list[list[float]], seqs: list[Sequence]) -> list[int]:
        self.steps_seen.append([len(seq.output_token_ids) for seq in seqs])
        return [max(range(len(row)), key=row.__getitem__) for row in logits]


def reference(
    prompt: list[int],
    max_tokens: int,
    eos: int | None = None,
    max_model_len: int = 10**9,
    stop_token_ids: tuple[int, ...] = (),
) -> list[int]:
    """What the engine must produce, computed without it (the stop token included)."""
    tokens, out = list(prompt), []
    while True:
        token = next_token(tokens)
        out.append(token)
        tokens.append(token)
        if token == eos or token in stop_token_ids or len(out) >= max_tokens or len(tokens) >= max_model_len:
            return out


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    final: StepOutput | None = None


def run_engine(
    engine: LLMEngine, max_steps: int = 10_000, on_step: Callable[[int, LLMEngine], None] | None = None
) -> dict[str, Result]:
    """Step until done, checking the scheduler's invariants after every step."""
    results: dict[str, Result] = {}
    for step in range(max_steps):
        if not engine.has_unfinished():
            check_all_free(engine.scheduler)
            return results
        for output in engine.step():
            result = results.setdefault(output.request_id, Result())
            assert result.final is None, f"{output.request_id} reported after it finished"
            result.tokens += output.new_token_ids
            if output.finished:
                result.final = output
        check_scheduler(engine.scheduler)
        if on_step is not None:
            on_step(step, engine)
    raise AssertionError(f"engine did not finish in {max_steps} steps")


def make_config(**overrides) -> EngineConfig:
    values = dict(
        block_size=4, num_kv_blocks=64, max_num_seqs=8, max_num_batched_tokens=32, max_model_len=128, max_waiting=16
    )
    values.update(overrides)
    return EngineConfig(**values)


def make_engine(eos_ids: tuple[int, ...] = (), **overrides) -> tuple[LLMEngine, FakeRunner]:
    config = make_config(**overrides)
    runner = FakeRunner(config.num_kv_blocks, config.block_size)
    return LLMEngine(config, runner, ArgmaxSampler(), eos_ids), runner


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above; tests take them as a fixture rather than importing conftest."""
    return SimpleNamespace(
        new_seq=new_seq,
        check_scheduler=check_scheduler,
        check_all_free=check_all_free,
        scheduler_step=scheduler_step,
        next_token=next_token,
        reference=reference,
        run_engine=run_engine,
        make_config=make_config,
        make_engine=make_engine,
        FakeRunner=FakeRunner,
        ArgmaxSampler=ArgmaxSampler,
        VOCAB=VOCAB,
    )
