"""Per-request state as the scheduler and the model runner see it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from tritonrag.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # not yet admitted, or preempted and waiting to recompute
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or max_model_len reached
    ABORT = "abort"  # cancelled by the client
    ERROR = "error"  # failed inside the engine


@dataclass
class Sequence:
    """One request's tokens and cache position.

    `num_computed_tokens` counts the leading tokens of `all_token_ids` whose keys and
    values are in the KV cache (from prefix-cache hits or from earlier steps). The
    tokens still to compute are `all_token_ids[num_computed_tokens:]`.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at admission
    block_table: list[int] = field(default_factory=list)
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    eos_token_ids: frozenset[int] = frozenset()  # the model's, set by the engine
    cumulative_logprob: float | None = None  # sum of the sampled tokens' logprobs, when logprobs are asked

    @property
    def all_stop_token_ids(self) -> frozenset[int]:
        """Token ids that end this sequence: `stop_token_ids`, and EOS unless `ignore_eos`."""
        stop = frozenset(self.sampling.stop_token_ids)
        return stop if self.sampling.ignore_eos else stop | self.eos_token_ids

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens not in the KV cache yet: the prompt left to prefill, or 1 (the last sampled token) in decode."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities at one generated position, of the raw model output (fp32 log_softmax).

    `rank` is the sampled token's rank, 1 + the number of tokens more likely than it;
    `top` holds the `logprobs` most likely tokens as (token id, logprob), most likely first.
    """

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class SampledToken:
    """What the sampler chose for one sequence, with its logprobs when the request asked for them."""

    token_id: int
    logprobs: TokenLogprobs | None = None


@dataclass
class ScheduledChunk:
    """Compute `num_new_tokens` tokens of `seq`, starting at `seq.num_computed_tokens`.

    When the chunk reaches the end of the sequence's known tokens, the step yields
    logits for its last position and the sampler appends one token.
    """

    seq: Sequence
    num_new_tokens: int

    @property
    def start(self) -> int:
        return self.seq.num_computed_tokens

    @property
    def end(self) -> int:
        return self.seq.num_computed_tokens + self.num_new_tokens

    @property
    def samples(self) -> bool:
        return self.end == self.seq.num_tokens

    @property
    def is_decode(self) -> bool:
        """One generated token after its context; any other chunk prefills (prompt or recomputed tokens)."""
        return self.num_new_tokens == 1 and self.start >= self.seq.num_prompt_tokens


@dataclass
class SchedulerOutput:
    """What one engine step computes; prefill chunks and decodes side by side."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(chunk.num_new_tokens for chunk in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks
