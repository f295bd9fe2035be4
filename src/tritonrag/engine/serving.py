"""Serve the engine: its own loop thread, per-request detokenizing, and delivery to sinks.

A *sink* is where one request's results go: the Triton adapter's sink turns them into
responses on the request's response sender; tests use a list. The loop thread is the
only one that touches the engine, so the engine needs no locks; other threads talk to
it through the inbox queue.

Life of a request: `submit` tokenizes and validates it, then queues it -> the loop adds
it to the engine -> each step's new tokens are detokenized into a text delta for the
sink -> a stop string, EOS, max_tokens, a cancelled sink or an engine failure ends it,
and its KV blocks go back to the pool in the same step.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from tritonrag.engine.detokenizer import IncrementalDetokenizer
from tritonrag.engine.llm_engine import LLMEngine, StepOutput
from tritonrag.engine.sequence import FinishReason
from tritonrag.errors import InvalidInput
from tritonrag.sampling import SamplingParams


@dataclass
class Completion:
    """What the final response reports."""

    finish_reason: str
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int


class Sink(Protocol):
    def send_delta(self, text: str) -> None: ...
    def finish(self, text: str, completion: Completion) -> None: ...
    def fail(self, error: Exception) -> None: ...
    def is_cancelled(self) -> bool: ...


class Observer(Protocol):
    """Metrics hooks, called on the loop thread; times in seconds."""

    def on_first_token(self, ttft: float) -> None: ...
    def on_inter_token(self, latency: float) -> None: ...
    def on_finish(self, e2e: float, completion: Completion) -> None: ...
    def on_step(self, engine: LLMEngine) -> None: ...


class NullObserver:
    def on_first_token(self, ttft: float) -> None: ...
    def on_inter_token(self, latency: float) -> None: ...
    def on_finish(self, e2e: float, completion: Completion) -> None: ...
    def on_step(self, engine: LLMEngine) -> None: ...


class CollectingSink:
    """A sink that gathers a request's deltas and lets the caller wait for the end."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.completion: Completion | None = None
        self.error: Exception | None = None
        self.cancelled = False
        self.done = threading.Event()

    def send_delta(self, text: str) -> None:
        self.deltas.append(text)

    def finish(self, text: str, completion: Completion) -> None:
        if text:
            self.deltas.append(text)
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

    def wait(self, timeout: float | None = None) -> "CollectingSink":
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return self


@dataclass
class _Live:
    """A request the engine is working on."""

    sink: Sink
    detokenizer: IncrementalDetokenizer
    arrival: float
    num_prompt_tokens: int
    last_token_time: float | None = None
    text: list[str] = field(default_factory=list)


@dataclass
class _Submission:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    sink: Sink
    arrival: float


class GenerationService:
    """Owns an LLMEngine and drives it from a background thread."""

    IDLE_WAIT_S = 0.05

    def __init__(self, engine: LLMEngine, tokenizer, observer: Observer | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.observer = observer or NullObserver()
        self._inbox: queue.Queue[_Submission] = queue.Queue()
        self._live: dict[str, _Live] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tritonrag-engine", daemon=True)
        self._thread.start()

    # ---- called from any thread -------------------------------------------------
    def submit(self, request_id: str, prompt: str, sampling: SamplingParams, sink: Sink) -> None:
        """Tokenize and validate now (errors reach the caller at once), generate later."""
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        if not prompt_ids:
            raise InvalidInput("text_input is empty")
        max_len = self.engine.config.max_model_len
        if len(prompt_ids) >= max_len:
            raise InvalidInput(f"prompt is {len(prompt_ids)} tokens; the limit is {max_len - 1} (max_model_len {max_len})")
        self._inbox.put(_Submission(request_id, prompt_ids, sampling, sink, time.monotonic()))

    def generate(self, prompt: str, sampling: SamplingParams, timeout: float | None = None) -> CollectingSink:
        """Blocking convenience: submit, wait, return the finished sink."""
        sink = CollectingSink()
        self.submit(f"sync-{id(sink)}", prompt, sampling, sink)
        return sink.wait(timeout)

    def warmup(self) -> None:
        """Run one short generation so the first real request does not pay for lazy init."""
        self.generate("Hello", SamplingParams(max_tokens=4), timeout=300)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    @property
    def num_live(self) -> int:
        return len(self._live)

    # ---- the loop thread ----------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._admit(block=not self.engine.has_unfinished())
            if self._drop_cancelled() and not self.engine.has_unfinished():
                self.observer.on_step(self.engine)  # publish the freed blocks even with no step to run
            if not self.engine.has_unfinished():
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - fail the batch, keep serving
                self._fail_all(exc)
                continue
            for output in outputs:
                self._deliver(output)
            self.observer.on_step(self.engine)
        shutdown = RuntimeError("the generator is shutting down")
        self._fail_all(shutdown)
        while not self._inbox.empty():
            self._inbox.get_nowait().sink.fail(shutdown)

    def _admit(self, block: bool) -> None:
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
        if item.sink.is_cancelled():
            item.sink.finish("", Completion(FinishReason.ABORT.value, len(item.prompt_ids), 0, 0))
            return
        try:
            self.engine.add_request(item.request_id, item.prompt_ids, item.sampling)
        except Exception as exc:  # noqa: BLE001 - e.g. a full waiting queue: that request's error
            item.sink.fail(exc)
            return
        detokenizer = IncrementalDetokenizer(self.tokenizer, item.prompt_ids, item.sampling.stop)
        self._live[item.request_id] = _Live(item.sink, detokenizer, item.arrival, len(item.prompt_ids))

    def _drop_cancelled(self) -> int:
        """Abort requests whose client cancelled or went away; their blocks are freed at once."""
        dropped = 0
        for request_id, live in list(self._live.items()):
            if live.sink.is_cancelled():
                self.engine.abort(request_id)
                del self._live[request_id]
                completion = Completion(FinishReason.ABORT.value, live.num_prompt_tokens, 0, 0)
                live.sink.finish("", completion)
                self.observer.on_finish(time.monotonic() - live.arrival, completion)
                dropped += 1
        return dropped

    def _deliver(self, output: StepOutput) -> None:
        live = self._live.get(output.request_id)
        if live is None:
            return
        self._time_tokens(live)
        delta = "".join(live.detokenizer.add(token) for token in output.new_token_ids)
        finished, reason = output.finished, output.finish_reason
        if live.detokenizer.stopped and not finished:
            self.engine.finish_request(output.request_id, FinishReason.STOP)
            finished, reason = True, FinishReason.STOP
        if not finished:
            if delta:
                live.sink.send_delta(delta)
            return
        delta += live.detokenizer.finish()
        del self._live[output.request_id]
        completion = Completion(
            finish_reason=FinishReason(reason).value,
            num_prompt_tokens=output.num_prompt_tokens,
            num_cached_tokens=output.num_cached_tokens,
            num_output_tokens=output.num_output_tokens,
        )
        live.sink.finish(delta, completion)
        self.observer.on_finish(time.monotonic() - live.arrival, completion)

    def _time_tokens(self, live: _Live) -> None:
        now = time.monotonic()
        if live.last_token_time is None:
            self.observer.on_first_token(now - live.arrival)
        else:
            self.observer.on_inter_token(now - live.last_token_time)
        live.last_token_time = now

    def _fail_all(self, error: Exception) -> None:
        for request_id, live in list(self._live.items()):
            try:
                self.engine.abort(request_id)
            finally:
                del self._live[request_id]
                live.sink.fail(error)
