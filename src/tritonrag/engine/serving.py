"""Serve the engine: its own loop thread, per-request detokenizing, and delivery to sinks.

A *sink* is where one request's results go: the Triton adapter's sink turns them into
responses on the request's response sender; tests use a list. The loop thread is the
only one that touches the engine, so the engine needs no locks; other threads talk to
it through the inbox queue.

Life of a request: `submit` tokenizes and validates it, then queues it -> the loop adds
it to the engine -> each step's new tokens are detokenized into a text delta for the
sink -> a stop string, EOS, max_tokens, a cancelled sink, its deadline or an engine failure
ends it, and its KV blocks go back to the pool in the same step. Every submitted request gets
exactly one `finish` or `fail`, also when its sink raises, the model fails, or the
service shuts down.

Every request has a deadline (`Deadline`): the engine's `request_timeout_s`, or the client's
own timeout when that is shorter, counted from `submit` so that time in the queue counts.
Nothing else bounds a request whose client cannot cancel it (Triton 2.51's ensemble does not
pass a `rag` client's cancel to its generation). Past it the loop ends the sequence before
its next step, frees its blocks and fails the sink with Unavailable("deadline exceeded: ...").

A request with `logprobs` set also gets, with each delta and with `finish`, the logprobs
of the tokens generated since the last call (vLLM's per-position `{token_id: Logprob}`),
so that concatenated they cover every generated token, a stop token included; sinks of
requests without `logprobs` are called with the text alone, as before.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from tritonrag.engine.detokenizer import IncrementalDetokenizer, Tokenizer
from tritonrag.engine.liveness import Heartbeat, StallWatch
from tritonrag.engine.llm_engine import LLMEngine, StepOutput
from tritonrag.engine.sequence import FinishReason, TokenLogprobs
from tritonrag.errors import InvalidInput, Unavailable
from tritonrag.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class Completion:
    """What the final response reports. `cumulative_logprob` is None unless the request set `logprobs`."""

    finish_reason: str
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    cumulative_logprob: float | None = None


@dataclass(frozen=True)
class Logprob:
    """vLLM's Logprob: one entry of a position's `{token_id: Logprob}` (the sampled token first, then the top N)."""

    logprob: float
    rank: int
    decoded_token: str


PositionLogprobs = dict[int, Logprob]


class Sink(Protocol):
    """Where one request's results go. `logprobs` is passed only for requests that set `logprobs`."""

    def send_delta(self, text: str, logprobs: list[PositionLogprobs] | None = None) -> None: ...
    def finish(self, text: str, completion: Completion, logprobs: list[PositionLogprobs] | None = None) -> None: ...
    def fail(self, error: Exception) -> None: ...
    def is_cancelled(self) -> bool: ...


class Observer(Protocol):
    """Metrics hooks, called on the loop thread; times in seconds."""

    def on_first_token(self, ttft: float) -> None: ...
    def on_inter_token(self, latency: float) -> None: ...
    def on_finish(self, e2e: float, completion: Completion) -> None: ...
    def on_timeout(self) -> None: ...  # a request ended by its deadline (it failed: no on_finish)
    def on_step(self, engine: LLMEngine) -> None: ...
    def on_stall(self, stalled: bool) -> None: ...  # from the stall watch's thread (tritonrag.engine.liveness)


class NullObserver:
    def on_first_token(self, ttft: float) -> None: ...
    def on_inter_token(self, latency: float) -> None: ...
    def on_finish(self, e2e: float, completion: Completion) -> None: ...
    def on_timeout(self) -> None: ...
    def on_step(self, engine: LLMEngine) -> None: ...
    def on_stall(self, stalled: bool) -> None: ...


@dataclass(frozen=True)
class Deadline:
    """When a request must be done by: its client's timeout or the service's default, whichever is
    shorter (a client may shorten its deadline, not extend it, as with Triton's queue timeouts)."""

    at: float  # on the service's clock (time.monotonic)
    timeout_s: float
    by_client: bool

    @classmethod
    def start(cls, arrival: float, default_s: float, timeout_s: float | None = None) -> Deadline:
        if timeout_s is not None and timeout_s < default_s:
            return cls(arrival + timeout_s, timeout_s, by_client=True)
        return cls(arrival + default_s, default_s, by_client=False)

    def passed(self, now: float) -> bool:
        return now >= self.at

    def error(self, num_output_tokens: int) -> Unavailable:
        whose = "set by the client" if self.by_client else "the generator's request_timeout_s"
        return Unavailable(
            f"deadline exceeded: the request ran {self.timeout_s:g} s, its timeout ({whose}), "
            f"and was ended after {num_output_tokens} generated tokens"
        )


class CollectingSink:
    """A sink that gathers a request's deltas and lets the caller wait for the end."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.logprobs: list[PositionLogprobs] = []
        self.completion: Completion | None = None
        self.error: Exception | None = None
        self.cancelled = False
        self.done = threading.Event()

    def send_delta(self, text: str, logprobs: list[PositionLogprobs] | None = None) -> None:
        self.deltas.append(text)
        self.logprobs += logprobs or []

    def finish(self, text: str, completion: Completion, logprobs: list[PositionLogprobs] | None = None) -> None:
        if text:
            self.deltas.append(text)
        self.logprobs += logprobs or []
        self.completion = completion
        self.done.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done.set()

    def is_cancelled(self) -> bool:
        return self.cancelled

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    def wait(self, timeout: float | None = None) -> CollectingSink:
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return self


@dataclass
class _Live:
    """A request the engine is working on."""

    client_id: str  # the client's id, for logs
    sink: Sink
    detokenizer: IncrementalDetokenizer
    arrival: float
    num_prompt_tokens: int
    deadline: Deadline
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    last_token_time: float | None = None
    wants_logprobs: bool = False
    pending_logprobs: list[PositionLogprobs] = field(default_factory=list)  # not yet handed to the sink
    cumulative_logprob: float | None = None


@dataclass
class _Submission:
    request_id: str  # the engine's id for it: unique, unlike client ids
    client_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    sink: Sink
    arrival: float
    deadline: Deadline


class GenerationService:
    """Owns an LLMEngine and drives it from a background thread.

    `engine` is an engine, or a function that builds one: the loop thread then builds it before
    its first step, so that every torch operator of the process runs on that one thread. Why it
    matters: each thread that runs a parallel operator gets its own OpenMP team, and once a
    process has more OpenMP threads than cores (weights loaded on the caller's thread, steps on
    the loop's) libgomp stops spin-waiting and wakes the workers through the kernel at every
    parallel region: a batch-1 bf16 decode step on 2 cores went from 18 to 28 ms
    (docs/bench/2026-12-01-thread-ownership.md).
    """

    IDLE_WAIT_S = 0.05

    def __init__(
        self,
        engine: LLMEngine | Callable[[], LLMEngine],
        tokenizer: Tokenizer,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,  # tests pass one they advance
    ):
        self._clock = clock
        self.tokenizer = tokenizer
        self.observer = observer or NullObserver()
        self._inbox: queue.SimpleQueue[_Submission] = queue.SimpleQueue()
        self._live: dict[str, _Live] = {}  # by the engine's request id; touched by the loop thread only
        self._ids = itertools.count()
        self._lock = threading.Lock()  # submit vs shutdown: nothing is queued after the final drain
        self._stopping = threading.Event()
        self._heartbeat = Heartbeat(clock)
        self._abandoned: set[str] = set()  # failed by the stall watch; the loop frees them when it moves
        built: Future[LLMEngine] = Future()  # the loop thread's engine, or why it could not build one
        self._thread = threading.Thread(target=self._run, args=(engine, built), name="tritonrag-engine", daemon=True)
        self._thread.start()
        self.engine: LLMEngine = built.result()  # raises the builder's error here, on the caller's thread
        self.watch = StallWatch(
            self._heartbeat,
            lambda: self._inbox.qsize() + len(self._live),
            self._thread,
            self.engine.config.stall_timeout_s,
            self._on_stall,
            self._on_recover,
        )
        threading.Thread(
            target=self.watch.run, args=(self._stopping,), name="tritonrag-stall-watch", daemon=True
        ).start()

    # ---- called from any thread -------------------------------------------------
    def submit(
        self, client_id: str, prompt: str, sampling: SamplingParams, sink: Sink, timeout_s: float | None = None
    ) -> None:
        """Tokenize and validate now (errors reach the caller at once), generate later.

        `timeout_s` is the client's own deadline; the engine's `request_timeout_s` applies when it
        is None or longer. Raises InvalidInput for a bad prompt or timeout and Unavailable once the
        service is shutting down.
        """
        arrival = self._clock()
        if timeout_s is not None and not 0 < timeout_s < float("inf"):
            raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout_s}")
        deadline = Deadline.start(arrival, self.engine.config.request_timeout_s, timeout_s)
        self._enqueue(client_id, prompt, sampling, sink, deadline, arrival)

    def _enqueue(
        self, client_id: str, prompt: str, sampling: SamplingParams, sink: Sink, deadline: Deadline, arrival: float
    ) -> None:
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        if not prompt_ids:
            raise InvalidInput("text_input is empty")
        max_len = self.engine.config.max_model_len
        if len(prompt_ids) >= max_len:
            raise InvalidInput(
                f"prompt is {len(prompt_ids)} tokens; the limit is {max_len - 1} (max_model_len {max_len})"
            )
        with self._lock:
            if self._stopping.is_set():
                raise Unavailable("the generator is shutting down")
            if self.watch.stalled is not None:
                raise Unavailable(f"the generator is stalled: {self.watch.stalled}")
            # Triton request ids are optional ("" for many clients) and need not be unique.
            request_id = f"{client_id}#{next(self._ids)}"
            self._inbox.put(_Submission(request_id, client_id, prompt_ids, sampling, sink, arrival, deadline))

    def generate(self, prompt: str, sampling: SamplingParams, timeout: float | None = None) -> CollectingSink:
        """Blocking convenience: submit, wait, return the finished sink."""
        sink = CollectingSink()
        self.submit("generate", prompt, sampling, sink)
        return sink.wait(timeout)

    def warmup(self, timeout_s: float = 300.0) -> None:
        """Run one short generation so the first real request does not pay for lazy init.

        Held to `timeout_s`, not to `request_timeout_s`: a short client deadline must not fail a
        model's load because its first step's lazy init took longer.
        """
        sink, now = CollectingSink(), self._clock()
        deadline = Deadline(now + timeout_s, timeout_s, by_client=False)
        self._enqueue("warmup", "Hello", SamplingParams(max_tokens=4), sink, deadline, now)
        sink.wait(timeout_s)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; queued and live requests get `fail(Unavailable)`, later `submit`s raise it."""
        with self._lock:
            self._stopping.set()
        self._thread.join(timeout)

    @property
    def num_live(self) -> int:
        return len(self._live)

    # ---- the loop thread ----------------------------------------------------------
    def _on_stall(self, reason: str) -> None:
        """The loop is stuck (tritonrag.engine.liveness): say why, end every waiting stream with
        UNAVAILABLE now (the blocks stay with the stuck loop), refuse new requests until it moves."""
        log.error("generator stalled: %s", reason)
        self._observe("on_stall", True)
        error = Unavailable(f"the generator is stalled: {reason}")
        for request_id, live in list(self._live.items()):
            with self._lock:
                self._abandoned.add(request_id)
            _call(live.sink.fail, error)
        while True:
            try:
                _call(self._inbox.get_nowait().sink.fail, error)
            except queue.Empty:
                break

    def _on_recover(self) -> None:
        log.warning("generator loop is making progress again; taking requests")
        self._observe("on_stall", False)

    def _run(self, engine: LLMEngine | Callable[[], LLMEngine], built: Future[LLMEngine]) -> None:
        """The loop thread: build the engine if given a builder, hand it over, then loop."""
        try:
            self.engine = engine if isinstance(engine, LLMEngine) else engine()
        except BaseException as exc:  # noqa: BLE001 - raised again in __init__, on the caller's thread
            built.set_exception(exc)
            return
        built.set_result(self.engine)
        self._loop()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._iterate()
            except Exception as exc:  # noqa: BLE001 - e.g. the model failed: fail the batch, keep serving
                log.exception("generation step failed; failing %d live requests", len(self._live))
                self._fail_all(exc)
            self._heartbeat.beat()
        error = Unavailable("the generator is shutting down")
        self._fail_all(error)
        while True:
            try:
                _call(self._inbox.get_nowait().sink.fail, error)
            except queue.Empty:
                break

    def _iterate(self) -> None:
        self._admit(block=not self.engine.has_unfinished())
        dropped = self._drop_cancelled() + self._drop_expired()
        if self.engine.has_unfinished():
            for output in self.engine.step():
                self._deliver(output)
        elif not dropped:
            return
        self._observe("on_step", self.engine)  # after dropping too: publish the freed blocks

    def _admit(self, block: bool) -> None:
        """Move everything in the inbox into the engine (waiting up to IDLE_WAIT_S if `block`)."""
        try:
            item = self._inbox.get(timeout=self.IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._add(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _add(self, item: _Submission) -> None:
        if _is_cancelled(item.sink):  # never reaches the engine
            completion = Completion(FinishReason.ABORT.value, len(item.prompt_ids), 0, 0)
            _call(item.sink.finish, "", completion)
            self._observe("on_finish", self._clock() - item.arrival, completion)
            return
        if item.deadline.passed(self._clock()):  # it waited out its deadline in the inbox
            _call(item.sink.fail, item.deadline.error(0))
            self._observe("on_timeout")
            return
        try:
            sampling = item.sampling
            detokenizer = IncrementalDetokenizer(
                self.tokenizer, item.prompt_ids, sampling.stop, sampling.skip_special_tokens, sampling.min_tokens
            )
            self.engine.add_request(item.request_id, item.prompt_ids, sampling)
        except Exception as exc:  # noqa: BLE001 - e.g. a full waiting queue: that request's error
            _call(item.sink.fail, exc)
            return
        self._live[item.request_id] = _Live(
            item.client_id,
            item.sink,
            detokenizer,
            item.arrival,
            len(item.prompt_ids),
            item.deadline,
            wants_logprobs=sampling.logprobs is not None,
        )

    def _drop_cancelled(self) -> int:
        """Abort requests whose client cancelled or went away; their blocks are freed at once.
        Those the stall watch failed are freed without a word (their sinks heard already)."""
        with self._lock:
            abandoned, self._abandoned = self._abandoned, set()
        for request_id in abandoned:
            if self._live.pop(request_id, None) is not None:
                self.engine.finish_request(request_id, FinishReason.ABORT)
        cancelled = [request_id for request_id, live in self._live.items() if _is_cancelled(live.sink)]
        for request_id in cancelled:
            self._end(request_id, FinishReason.ABORT)
        return len(cancelled) + len(abandoned)

    def _drop_expired(self) -> int:
        """Fail requests past their deadline, waiting or running; their blocks are freed at once."""
        now = self._clock()
        expired = [(request_id, live) for request_id, live in self._live.items() if live.deadline.passed(now)]
        for request_id, live in expired:
            self._end(request_id, error=live.deadline.error(live.num_output_tokens))
            self._observe("on_timeout")
        return len(expired)

    def _deliver(self, output: StepOutput) -> None:
        request_id = output.request_id
        live = self._live.get(request_id)
        if live is None or request_id in self._abandoned:  # the stall watch failed it: dropped next iteration
            return
        if output.num_output_tokens > live.num_output_tokens:
            self._time_tokens(live)
        live.num_cached_tokens, live.num_output_tokens = output.num_cached_tokens, output.num_output_tokens
        live.cumulative_logprob = output.cumulative_logprob
        reason = output.finish_reason if output.finished else None
        try:
            live.pending_logprobs += [self._position(lp) for lp in output.logprobs]
            delta = "".join(live.detokenizer.add(token) for token in output.new_token_ids)
            if live.detokenizer.stopped:  # a stop string; it wins over a length limit hit in the same step
                reason = FinishReason.STOP
            if reason is None:
                if delta:
                    live.sink.send_delta(delta, *self._take_logprobs(live))
                return
            delta += live.detokenizer.finish()
        except Exception as exc:  # noqa: BLE001 - a sink that raises (client gone) or a bad token: this request only
            self._end(request_id, error=exc)
            return
        if reason is FinishReason.ERROR:  # the scheduler gave up on it (it outgrew the KV cache)
            self._end(
                request_id,
                error=RuntimeError("the request outgrew the KV cache; lower max_tokens or the prompt length"),
            )
        else:
            self._end(request_id, FinishReason(reason), delta)

    def _position(self, logprobs: TokenLogprobs) -> PositionLogprobs:
        """vLLM's `{token_id: Logprob}` for one position: the sampled token first, then the top N."""
        entries = [(logprobs.token_id, logprobs.logprob, logprobs.rank)]
        entries += [(token_id, value, rank) for rank, (token_id, value) in enumerate(logprobs.top, start=1)]
        position: PositionLogprobs = {}
        for token_id, value, rank in entries:
            if token_id not in position:
                text = str(self.tokenizer.decode([token_id], skip_special_tokens=False))
                position[token_id] = Logprob(value, rank, text)
        return position

    @staticmethod
    def _take_logprobs(live: _Live) -> tuple[list[PositionLogprobs], ...]:
        """The pending logprobs as the extra sink argument, or no argument for a request that did not ask."""
        if not live.wants_logprobs:
            return ()
        taken, live.pending_logprobs = live.pending_logprobs, []
        return (taken,)

    def _time_tokens(self, live: _Live) -> None:
        now = self._clock()
        if live.last_token_time is None:
            self._observe("on_first_token", now - live.arrival)
        else:
            self._observe("on_inter_token", now - live.last_token_time)
        live.last_token_time = now

    def _end(
        self, request_id: str, reason: FinishReason = FinishReason.ABORT, text: str = "", error: Exception | None = None
    ) -> None:
        """Take a request out: free its blocks now (a no-op if the engine already did), then tell its sink once."""
        live = self._live.pop(request_id)
        try:
            self.engine.finish_request(request_id, reason if error is None else FinishReason.ERROR)
        except Exception:  # noqa: BLE001 - the sink must still hear about it
            log.exception("could not free request %r", live.client_id)
        if error is not None:
            _call(live.sink.fail, error)
            return
        completion = Completion(
            reason.value,
            live.num_prompt_tokens,
            live.num_cached_tokens,
            live.num_output_tokens,
            live.cumulative_logprob,
        )
        _call(live.sink.finish, text, completion, *self._take_logprobs(live))
        self._observe("on_finish", self._clock() - live.arrival, completion)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self._live):
            self._end(request_id, error=error)

    def _observe(self, hook: str, *args: object) -> None:
        """Metrics must not take the loop down."""
        try:
            getattr(self.observer, hook)(*args)
        except Exception:  # noqa: BLE001
            log.exception("observer %s failed", hook)


def _call(callback: Callable[..., object], *args: object) -> None:
    """Call a sink; one that raises (its client is gone) must not take the loop down."""
    try:
        callback(*args)
    except Exception:  # noqa: BLE001
        log.exception("sink %s failed", getattr(callback, "__name__", callback))


def _is_cancelled(sink: Sink) -> bool:
    try:
        return sink.is_cancelled()
    except Exception:  # noqa: BLE001 - cannot tell: treat the client as gone
        log.exception("sink is_cancelled failed")
        return True
