"""GenerationService: a real LLMEngine on its loop thread, a fake model, the real SmolLM2 tokenizer.

The fake model's token ids are below 101; in the 49152-token SmolLM2 vocab, ids 0-16 are
special tokens (no text) and 17-100 single ASCII characters, so every id is valid and the
expected text of a request is `tokenizer.decode(kit.reference(prompt_ids, n))`.

Nothing sleeps: tests wait on the sinks' events, and `GatedRunner.hold()` parks the loop
thread inside a step so that what is submitted meanwhile reaches the engine together.
Deadlines run on a `FakeClock` the tests advance, so no test waits for one to pass.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.sampler import Sampler
from tritonrag.engine.serving import CollectingSink, GenerationService, Logprob
from tritonrag.errors import InvalidInput, Unavailable, error_from_message
from tritonrag.sampling import SamplingParams

WAIT_S = 10.0
MODEL_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "weights" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tokenizer():
    if not (MODEL_DIR / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {MODEL_DIR} (fetch the smollm2-135m-instruct artifact)")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))
    assert len(tok) > 100
    return tok


class GatedRunner:
    """Wraps the FakeRunner: `hold()` parks the next step until `release()`; `fail_when` fails one step."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.num_kv_blocks = inner.num_kv_blocks
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()  # the loop thread is parked in a step
        self.fail_when = None  # predicate on the SchedulerOutput; fires once

    @property
    def steps(self) -> list[list[tuple[str, int, int]]]:
        return self.inner.steps

    def hold(self) -> None:
        self.blocked.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def execute(self, out):
        if not self.gate.is_set():
            self.blocked.set()
            if not self.gate.wait(WAIT_S):
                raise TimeoutError("the test never released the runner")
        if self.fail_when is not None and self.fail_when(out):
            self.fail_when = None
            raise RuntimeError("injected runner failure")
        return self.inner.execute(out)


class Recorder:
    """Observer that records every hook and checks the scheduler after each step (on the loop thread)."""

    def __init__(self, check_scheduler) -> None:
        self.check_scheduler = check_scheduler
        self.first_token: list[float] = []
        self.inter_token: list[float] = []
        self.finished: list[tuple[float, object]] = []
        self.timeouts = 0
        self.stalls: list[bool] = []
        self.steps = 0
        self.errors: list[Exception] = []

    def on_first_token(self, ttft: float) -> None:
        self.first_token.append(ttft)

    def on_inter_token(self, latency: float) -> None:
        self.inter_token.append(latency)

    def on_finish(self, e2e: float, completion) -> None:
        self.finished.append((e2e, completion))

    def on_timeout(self) -> None:
        self.timeouts += 1

    def on_stall(self, stalled: bool) -> None:
        self.stalls.append(stalled)

    def on_step(self, engine) -> None:
        self.steps += 1
        try:
            self.check_scheduler(engine.scheduler)
        except Exception as exc:  # noqa: BLE001 - the service swallows observer errors; report them in teardown
            self.errors.append(exc)


@pytest.fixture
def serve(kit, tokenizer):
    """serve(**config) -> a running service over a gated fake runner; torn down with full checks."""
    made = []

    def make(sampler=None, clock=None, **config) -> SimpleNamespace:
        cfg = kit.make_config(**config)
        runner = GatedRunner(kit.FakeRunner(cfg.num_kv_blocks, cfg.block_size))
        engine = LLMEngine(cfg, runner, sampler or kit.ArgmaxSampler())
        observer = Recorder(kit.check_scheduler)
        service = GenerationService(engine, tokenizer, observer, **({"clock": clock} if clock else {}))
        s = SimpleNamespace(engine=engine, runner=runner, observer=observer, service=service)
        made.append(s)
        return s

    yield make
    for s in made:
        s.runner.release()
        s.service.shutdown(WAIT_S)
        assert not s.service._thread.is_alive(), "the loop thread did not stop"
        kit.check_all_free(s.engine.scheduler)
        assert not s.observer.errors, s.observer.errors


class Sink(CollectingSink):
    """CollectingSink that counts its final callbacks: each request must get exactly one."""

    def __init__(self) -> None:
        super().__init__()
        self.num_final = 0

    def finish(self, text, completion, logprobs=None):
        self.num_final += 1
        super().finish(text, completion, logprobs)

    def fail(self, error):
        self.num_final += 1
        super().fail(error)


def expect(kit, tokenizer, prompt: str, max_tokens: int) -> SimpleNamespace:
    ids = tokenizer(prompt)["input_ids"]
    out = kit.reference(ids, max_tokens)
    return SimpleNamespace(ids=ids, out=out, text=tokenizer.decode(out, skip_special_tokens=True))


def wait(*sinks: Sink) -> None:
    for sink in sinks:
        assert sink.done.wait(WAIT_S), "a request got neither finish nor fail"
        assert sink.num_final == 1


def submit_together(s, first: tuple, rest: list[tuple]) -> None:
    """`first` runs its first step while `rest` is queued, so all of them are in the engine by the next step."""
    s.runner.hold()
    s.service.submit(*first)
    assert s.runner.blocked.wait(WAIT_S)
    for args in rest:
        s.service.submit(*args)
    s.runner.release()


def keys_in_steps(steps) -> list[set[str]]:
    """Client request ids per runner step (the engine's keys are `<request_id>#<n>`)."""
    return [{key.rsplit("#", 1)[0] for key, _, _ in step} for step in steps]


WORDS = ["Apple", "Banana", "Cherry", "Dog", "Eagle", "Forest", "Guitar", "House"]


# ---- tests -----------------------------------------------------------------------------------
def test_concurrent_submissions_all_finish(serve, kit, tokenizer):
    s = serve()
    prompts = [f"{word} number {i} is here" for i, word in enumerate(WORDS)]
    sinks = [Sink() for _ in prompts]
    # Every client id is "", as with Triton clients that set none: the service keys requests itself.
    threads = [
        threading.Thread(target=s.service.submit, args=("", p, SamplingParams(max_tokens=10 + i), sink))
        for i, (p, sink) in enumerate(zip(prompts, sinks))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    wait(*sinks)
    for i, (prompt, sink) in enumerate(zip(prompts, sinks)):
        want = expect(kit, tokenizer, prompt, 10 + i)
        assert sink.error is None
        assert sink.text == want.text and all(sink.deltas)
        c = sink.completion
        assert (c.finish_reason, c.num_prompt_tokens, c.num_output_tokens, c.num_cached_tokens) == (
            "length",
            len(want.ids),
            10 + i,
            0,
        )
    kit.check_all_free(s.engine.scheduler)


def test_cancel_mid_generation_aborts_within_one_step(serve, kit, tokenizer):
    s = serve()

    class CancelAfter(Sink):
        """Cancels itself when its third delta arrives (on the loop thread, inside a step)."""

        def send_delta(self, text):
            super().send_delta(text)
            if len(self.deltas) == 3:
                self.cancelled = True
                self.cancel_step = len(s.runner.steps)

        def finish(self, text, completion):  # the victim's blocks are free when it hears about it
            self.seqs_left = [q.request_id for q in s.engine.scheduler.running + list(s.engine.scheduler.waiting)]
            kit.check_scheduler(s.engine.scheduler)
            super().finish(text, completion)

    victim = CancelAfter()
    others = {f"o{i}": Sink() for i in range(3)}
    submit_together(
        s,
        ("victim", "Victim prompt text", SamplingParams(max_tokens=40), victim),
        [
            (rid, f"{WORDS[i]} other prompt", SamplingParams(max_tokens=30), sink)
            for i, (rid, sink) in enumerate(others.items())
        ],
    )
    wait(victim, *others.values())

    c = victim.completion
    assert victim.error is None and c.finish_reason == "abort"
    assert 3 <= c.num_output_tokens < 40
    ref = expect(kit, tokenizer, "Victim prompt text", 40).out
    assert victim.text == tokenizer.decode(ref[: c.num_output_tokens], skip_special_tokens=True)
    assert "victim" not in {key.rsplit("#", 1)[0] for key in victim.seqs_left}
    per_step = keys_in_steps(s.runner.steps)
    assert all("victim" in step for step in per_step[1 : victim.cancel_step])
    assert not any("victim" in step for step in per_step[victim.cancel_step :]), "ran a step after the cancel"
    assert any(len(step) == 3 for step in per_step[victim.cancel_step :]), "others ran on after the abort"
    for i, sink in enumerate(others.values()):
        assert sink.completion.finish_reason == "length"
        assert sink.text == expect(kit, tokenizer, f"{WORDS[i]} other prompt", 30).text
    kit.check_all_free(s.engine.scheduler)
    assert s.engine.stats().kv_usage == 0.0


def test_cancel_from_client_threads(serve, kit, tokenizer):
    """Cancels racing the loop from other threads: each request ends once, as a prefix of its reference."""
    s = serve()

    class FirstDelta(Sink):
        def __init__(self):
            super().__init__()
            self.started = threading.Event()

        def send_delta(self, text):
            super().send_delta(text)
            self.started.set()

    prompts = [f"{word} races a cancel" for word in WORDS]
    sinks = [FirstDelta() for _ in prompts]
    for i, (prompt, sink) in enumerate(zip(prompts, sinks)):
        s.service.submit(f"r{i}", prompt, SamplingParams(max_tokens=100), sink)
    for sink in sinks[::2]:
        assert sink.started.wait(WAIT_S)
        sink.cancelled = True
    wait(*sinks)
    for i, (prompt, sink) in enumerate(zip(prompts, sinks)):
        c = sink.completion
        ref = expect(kit, tokenizer, prompt, 100).out
        assert sink.text == tokenizer.decode(ref[: c.num_output_tokens], skip_special_tokens=True)
        assert c.finish_reason == ("length" if i % 2 else "abort") or c.num_output_tokens == 100
    kit.check_all_free(s.engine.scheduler)


def test_cancel_before_admission_never_reaches_the_engine(serve, kit):
    s = serve()
    sink = Sink()
    sink.cancelled = True
    s.service.submit("early", "Never run this", SamplingParams(max_tokens=8), sink)
    wait(sink)
    c = sink.completion
    assert (c.finish_reason, c.num_output_tokens, sink.text) == ("abort", 0, "")
    assert s.runner.steps == [] and s.engine.stats().prompt_tokens_total == 0
    assert [done.finish_reason for _, done in s.observer.finished] == ["abort"]


@pytest.mark.parametrize("limit", ["loose", "same_step"])
def test_stop_string_cuts_the_text_and_frees_the_blocks(serve, kit, tokenizer, limit):
    s = serve()
    prompt = "Tell me a story about stop strings"
    full = expect(kit, tokenizer, prompt, 40)
    stop = full.text[12:15]
    cut = full.text.find(stop)
    assert cut > 0
    # the step at which the stop string is complete
    n = next(i for i in range(1, 41) if stop in tokenizer.decode(full.out[:i], skip_special_tokens=True))
    max_tokens = 40 if limit == "loose" else n  # same_step: max_tokens ends it in that step too
    sink = Sink()
    s.service.submit("stop", prompt, SamplingParams(max_tokens=max_tokens, stop=["zzz", stop]), sink)
    wait(sink)
    assert sink.error is None
    assert sink.text == full.text[:cut]
    assert (sink.completion.finish_reason, sink.completion.num_output_tokens) == ("stop", n)
    assert len(s.runner.steps) == n  # no step after the one that completed the stop string
    kit.check_all_free(s.engine.scheduler)


def test_runner_failure_fails_live_requests_and_service_recovers(serve, kit, tokenizer):
    s = serve()
    sinks = {rid: Sink() for rid in ("a", "b", "c")}
    s.runner.fail_when = lambda out: len(out.chunks) == 3  # the step that has all three
    submit_together(
        s,
        ("a", "Apple first prompt", SamplingParams(max_tokens=30), sinks["a"]),
        [(rid, f"{rid} later prompt", SamplingParams(max_tokens=30), sinks[rid]) for rid in ("b", "c")],
    )
    wait(*sinks.values())
    for sink in sinks.values():
        assert sink.completion is None
        assert isinstance(sink.error, RuntimeError) and "injected" in str(sink.error)
    assert s.service.num_live == 0
    kit.check_all_free(s.engine.scheduler)

    later = Sink()
    s.service.submit("d", "Dog after the failure", SamplingParams(max_tokens=12), later)
    wait(later)
    assert later.error is None and later.completion.finish_reason == "length"
    assert later.text == expect(kit, tokenizer, "Dog after the failure", 12).text


def test_request_longer_than_the_kv_cache_ends_at_its_length(serve, kit, tokenizer):
    """max_model_len is clamped to the pool (16 tokens): the request ends with `length`, not a late error."""
    s = serve(num_kv_blocks=4)  # 16 tokens in all
    sink, fine = Sink(), Sink()
    s.service.submit("big", "Apple pie", SamplingParams(max_tokens=40), sink)
    wait(sink)
    assert sink.error is None and sink.completion.finish_reason == "length"
    assert sink.completion.num_prompt_tokens + sink.completion.num_output_tokens == 16
    s.service.submit("small", "Apple pie", SamplingParams(max_tokens=3), fine)
    wait(fine)
    assert fine.text == expect(kit, tokenizer, "Apple pie", 3).text


def test_full_waiting_queue_rejects_with_unavailable(serve, kit, tokenizer):
    s = serve(max_waiting=1)
    sinks = {rid: Sink() for rid in "abcd"}
    submit_together(
        s,
        ("a", "a prompt", SamplingParams(max_tokens=5), sinks["a"]),
        [(rid, f"{rid} prompt", SamplingParams(max_tokens=5), sinks[rid]) for rid in "bcd"],
    )
    wait(*sinks.values())
    for rid in "ab":  # a is running, b takes the one waiting place
        assert sinks[rid].text == expect(kit, tokenizer, f"{rid} prompt", 5).text
    for rid in "cd":
        assert isinstance(sinks[rid].error, Unavailable) and sinks[rid].completion is None


def test_bad_prompts_are_rejected_at_submit(serve):
    s = serve(max_model_len=16)
    sink = Sink()
    with pytest.raises(InvalidInput, match="max_model_len 16"):
        s.service.submit("long", "word " * 40, SamplingParams(max_tokens=4), sink)
    with pytest.raises(InvalidInput, match="empty"):
        s.service.submit("empty", "", SamplingParams(max_tokens=4), sink)
    assert not sink.done.is_set() and s.runner.steps == []


def test_shutdown_fails_queued_and_live_requests(serve):
    s = serve()
    live, queued, late = Sink(), Sink(), Sink()
    s.runner.hold()  # park the first step
    s.service.submit("live", "Live prompt", SamplingParams(max_tokens=30), live)
    assert s.runner.blocked.wait(WAIT_S)
    s.service.submit("queued", "Queued prompt", SamplingParams(max_tokens=30), queued)
    s.service.shutdown(timeout=0.01)  # the loop is parked: this only marks it stopping
    assert s.service._thread.is_alive()
    with pytest.raises(Unavailable):
        s.service.submit("late", "Too late", SamplingParams(max_tokens=4), late)
    s.runner.release()
    s.service.shutdown(WAIT_S)
    assert not s.service._thread.is_alive()
    wait(live, queued)
    for sink in (live, queued):
        assert isinstance(sink.error, Unavailable) and sink.completion is None
    assert not late.done.is_set()


def test_observer_gets_every_callback(serve, kit):
    s = serve()
    sinks = [Sink(), Sink()]
    submit_together(
        s,
        ("x", "Xylophone", SamplingParams(max_tokens=5), sinks[0]),
        [("y", "Yellow", SamplingParams(max_tokens=7), sinks[1])],
    )
    wait(*sinks)
    obs = s.observer
    assert len(obs.first_token) == 2
    assert len(obs.inter_token) == 4 + 6
    assert all(t >= 0 for t in obs.first_token + obs.inter_token)
    assert sorted(c.num_output_tokens for _, c in obs.finished) == [5, 7]
    assert Counter(c.finish_reason for _, c in obs.finished) == {"length": 2}
    assert all(e2e >= 0 for e2e, _ in obs.finished)
    assert obs.steps >= 7 and obs.steps >= len(s.runner.steps) - 1


def test_a_broken_sink_fails_only_its_request(serve, kit, tokenizer):
    s = serve()

    class Broken(Sink):
        def send_delta(self, text):
            raise ConnectionError("client went away")

    broken, fine = Broken(), Sink()
    submit_together(
        s,
        ("broken", "Broken prompt", SamplingParams(max_tokens=20), broken),
        [("fine", "Fine prompt", SamplingParams(max_tokens=20), fine)],
    )
    wait(broken, fine)
    assert isinstance(broken.error, ConnectionError)
    assert fine.text == expect(kit, tokenizer, "Fine prompt", 20).text
    kit.check_all_free(s.engine.scheduler)


def test_generate_and_warmup(serve, kit, tokenizer):
    s = serve()
    s.service.warmup()
    sink = s.service.generate("Hello there", SamplingParams(max_tokens=6), timeout=WAIT_S)
    assert sink.text == expect(kit, tokenizer, "Hello there", 6).text
    assert sink.completion.num_output_tokens == 6


# ---- logprobs, min_tokens, skip_special_tokens ---------------------------------------------
class TextOnlySink:
    """A sink written before logprobs existed: it takes text alone, and must keep working."""

    def __init__(self) -> None:
        self.inner = CollectingSink()

    def send_delta(self, text):
        self.inner.send_delta(text)

    def finish(self, text, completion):
        self.inner.finish(text, completion)

    def fail(self, error):
        self.inner.fail(error)

    def is_cancelled(self):
        return False


def test_logprobs_reach_the_sink_with_every_delta_and_the_finish(serve, kit, tokenizer):
    s = serve(sampler=Sampler(seed=0))
    prompt = "Logprobs for every token please"
    want = expect(kit, tokenizer, prompt, 12)
    sink, old = Sink(), TextOnlySink()
    s.service.submit("lp", prompt, SamplingParams(max_tokens=12, logprobs=3), sink)
    s.service.submit("old", prompt, SamplingParams(max_tokens=12), old)
    wait(sink)
    assert (
        old.inner.done.wait(WAIT_S) and old.inner.text == want.text and old.inner.completion.cumulative_logprob is None
    )
    assert sink.text == want.text
    assert len(sink.logprobs) == 12  # one position per generated token, across deltas and finish
    one_hot = 1.0 - math.log(math.e + kit.VOCAB - 1)
    for token_id, position in zip(want.out, sink.logprobs):
        first_id, first = next(iter(position.items()))
        assert first_id == token_id and first.rank == 1 and first.logprob == pytest.approx(one_hot, abs=1e-5)
        assert first.decoded_token == tokenizer.decode([token_id])
        assert len(position) == 3 and all(isinstance(entry, Logprob) for entry in position.values())
        assert sorted(entry.rank for entry in position.values()) == [1, 2, 3]
    assert sink.completion.cumulative_logprob == pytest.approx(12 * one_hot, abs=1e-4)


def test_min_tokens_holds_back_a_stop_string(serve, kit, tokenizer):
    s = serve()
    prompt = "Tell me a story about stop strings"
    full = expect(kit, tokenizer, prompt, 40)
    stop = full.text[2:4]
    n = next(i for i in range(1, 41) if stop in tokenizer.decode(full.out[:i], skip_special_tokens=True))
    early, late = Sink(), Sink()
    s.service.submit("early", prompt, SamplingParams(max_tokens=40, stop=[stop]), early)
    s.service.submit("late", prompt, SamplingParams(max_tokens=40, min_tokens=n, stop=[stop]), late)
    wait(early, late)
    assert early.completion.num_output_tokens == n and early.text == full.text[: full.text.find(stop)]
    assert late.completion.num_output_tokens > n  # the stop string inside the first n tokens did not count
    assert late.text.startswith(full.text[: full.text.find(stop) + len(stop)])


def test_skip_special_tokens_false_keeps_special_token_text(serve, kit, tokenizer):
    s = serve()
    prompt = "x"
    ids = tokenizer(prompt)["input_ids"]
    out = kit.reference(ids, 30)
    special = [t for t in out if t in tokenizer.all_special_ids]
    if not special:
        pytest.skip("the fake model emits no special token for this prompt")
    sink = Sink()
    s.service.submit("raw", prompt, SamplingParams(max_tokens=30, skip_special_tokens=False), sink)
    wait(sink)
    assert sink.text == tokenizer.decode(out, skip_special_tokens=False)
    assert sink.text != tokenizer.decode(out, skip_special_tokens=True)


# ---- deadlines --------------------------------------------------------------------------------
class FakeClock:
    """The service's clock: it moves only when a test advances it (from any thread)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class AdvanceAfter(Sink):
    """Moves the clock on when its n-th delta arrives (on the loop thread, inside a step)."""

    def __init__(self, s, clock: FakeClock, n: int, seconds: float) -> None:
        super().__init__()
        self.s, self.clock, self.n, self.seconds = s, clock, n, seconds
        self.step_at_advance: int | None = None

    def send_delta(self, text):
        super().send_delta(text)
        if len(self.deltas) == self.n:
            self.clock.advance(self.seconds)
            self.step_at_advance = len(self.s.runner.steps)


def test_a_deadline_ends_a_running_request_within_a_step_and_frees_its_blocks(serve, kit, tokenizer):
    """A client's timeout passes mid-generation: the request fails UNAVAILABLE (the router's classifier
    agrees) before another step, its blocks go back, and the others run on to their normal end."""
    clock = FakeClock()
    s = serve(clock=clock)
    victim = AdvanceAfter(s, clock, n=3, seconds=6.0)
    others = {f"o{i}": Sink() for i in range(3)}
    submit_together(
        s,
        ("victim", "Victim prompt text", SamplingParams(max_tokens=40), victim, 5.0),
        [
            (rid, f"{WORDS[i]} other prompt", SamplingParams(max_tokens=30), sink)
            for i, (rid, sink) in enumerate(others.items())
        ],
    )
    wait(victim, *others.values())

    assert victim.completion is None and isinstance(victim.error, Unavailable)
    message = str(victim.error)
    assert message.startswith("deadline exceeded: the request ran 5 s, its timeout (set by the client)")
    generated = int(re.search(r"after (\d+) generated tokens", message).group(1))
    assert 3 <= generated < 40  # its third delta moved the clock (a special token's delta is empty)
    ref = expect(kit, tokenizer, "Victim prompt text", 40).out
    assert victim.text == tokenizer.decode(ref[:generated], skip_special_tokens=True)
    assert isinstance(error_from_message(message), Unavailable)  # how it crosses the router's gRPC stream
    per_step = keys_in_steps(s.runner.steps)
    assert all("victim" in step for step in per_step[1 : victim.step_at_advance])
    assert not any("victim" in step for step in per_step[victim.step_at_advance :]), "ran a step past its deadline"
    assert any(len(step) == 3 for step in per_step[victim.step_at_advance :]), "others ran on after it"
    for i, sink in enumerate(others.values()):  # the default deadline (300 s) is far off for them
        assert sink.completion.finish_reason == "length"
        assert sink.text == expect(kit, tokenizer, f"{WORDS[i]} other prompt", 30).text
    assert s.observer.timeouts == 1
    assert "abort" not in {c.finish_reason for _, c in s.observer.finished}  # a timeout is no finish
    kit.check_all_free(s.engine.scheduler)
    assert s.engine.stats().kv_usage == 0.0


def test_time_waiting_in_the_queue_counts(serve, kit, tokenizer):
    """One sequence runs at a time: the second waits in the engine's queue, its deadline passes there, and it
    fails with no token generated and no step ever computed for it."""
    clock = FakeClock()
    s = serve(clock=clock, max_num_seqs=1)
    first = AdvanceAfter(s, clock, n=2, seconds=10.0)
    waiting = Sink()
    submit_together(
        s,
        ("first", "First prompt here", SamplingParams(max_tokens=20), first),
        [("waiting", "Waiting prompt", SamplingParams(max_tokens=20), waiting, 5.0)],
    )
    wait(first, waiting)
    assert first.completion.finish_reason == "length"
    assert first.text == expect(kit, tokenizer, "First prompt here", 20).text
    assert isinstance(waiting.error, Unavailable) and "after 0 generated tokens" in str(waiting.error)
    assert not any("waiting" in step for step in keys_in_steps(s.runner.steps))
    assert s.observer.timeouts == 1
    kit.check_all_free(s.engine.scheduler)


def test_a_deadline_passed_before_admission_never_reaches_the_engine(serve, kit):
    clock = FakeClock()
    s = serve(clock=clock)
    parked, late = Sink(), Sink()
    s.runner.hold()  # the loop is inside a step while the late request's deadline passes in the inbox
    s.service.submit("parked", "Parked prompt", SamplingParams(max_tokens=4), parked)
    assert s.runner.blocked.wait(WAIT_S)
    s.service.submit("late", "Late prompt", SamplingParams(max_tokens=4), late, timeout_s=1.0)
    clock.advance(2.0)
    s.runner.release()
    wait(parked, late)
    assert parked.completion.finish_reason == "length"
    assert isinstance(late.error, Unavailable) and str(late.error).startswith("deadline exceeded")
    assert not any("late" in step for step in keys_in_steps(s.runner.steps))
    assert s.observer.timeouts == 1


def test_the_engine_default_applies_and_a_longer_client_timeout_does_not_extend_it(serve, kit):
    clock = FakeClock()
    s = serve(clock=clock, request_timeout_s=5.0)
    sink = AdvanceAfter(s, clock, n=2, seconds=6.0)
    s.service.submit("long", "Long prompt", SamplingParams(max_tokens=40), sink, timeout_s=60.0)
    wait(sink)
    assert isinstance(sink.error, Unavailable)
    assert str(sink.error).startswith(
        "deadline exceeded: the request ran 5 s, its timeout (the generator's request_timeout_s)"
    )
    kit.check_all_free(s.engine.scheduler)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, math.nan, math.inf])
def test_a_bad_timeout_is_refused_at_submit(serve, timeout_s):
    s = serve()
    sink = Sink()
    with pytest.raises(InvalidInput, match="timeout must be a positive number of seconds"):
        s.service.submit("bad", "Some prompt", SamplingParams(max_tokens=4), sink, timeout_s=timeout_s)
    assert not sink.done.is_set() and s.runner.steps == []


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf"])
def test_request_timeout_s_must_be_positive_and_finite(value):
    with pytest.raises(ValueError, match="request_timeout_s must be a positive number of seconds"):
        EngineConfig.from_parameters({"request_timeout_s": value})
    assert EngineConfig.from_parameters({"request_timeout_s": "2.5"}).request_timeout_s == 2.5


def test_warmup_is_not_held_to_the_request_deadline(serve, kit):
    """A model's load must not fail because its first step (lazy init) outlasted a short request_timeout_s."""
    clock = FakeClock()
    s = serve(clock=clock, request_timeout_s=1.0)
    s.runner.hold()
    done: list[BaseException | None] = []

    def warm() -> None:
        try:
            s.service.warmup(timeout_s=WAIT_S)
            done.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            done.append(exc)

    thread = threading.Thread(target=warm)
    thread.start()
    assert s.runner.blocked.wait(WAIT_S)
    clock.advance(5.0)  # past request_timeout_s while the first step runs
    s.runner.release()
    thread.join(WAIT_S)
    assert done == [None] and s.observer.timeouts == 0


def test_a_stalled_loop_ends_its_streams_refuses_new_ones_and_recovers(serve, kit, tokenizer):
    """The loop parks in a step with work (a stuck runner): past stall_timeout_s the watch fails the
    running and the queued request UNAVAILABLE saying where the loop is, refuses new ones, and flags
    the stall; when the step returns, the loop frees the failed requests' blocks without a second
    word to their sinks, and serves again."""
    s = serve(stall_timeout_s=0.5)
    s.runner.hold()
    running, queued = Sink(), Sink()
    s.service.submit("stuck", "A prompt that will hang", SamplingParams(max_tokens=20), running)
    assert s.runner.blocked.wait(WAIT_S)
    s.service.submit("behind", "Another prompt", SamplingParams(max_tokens=5), queued)
    wait(running, queued)
    for sink in (running, queued):
        assert isinstance(sink.error, Unavailable) and "the generator is stalled" in str(sink.error)
    assert "execute" in str(running.error), "the reason names where the loop thread is"
    assert s.observer.stalls == [True]
    with pytest.raises(Unavailable, match="stalled"):
        s.service.submit("late", "Refused while stalled", SamplingParams(max_tokens=5), Sink())
    s.runner.release()
    after = Sink()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:  # the watch notices the beats within a quarter of the timeout
        try:
            s.service.submit("after", "Apple other prompt", SamplingParams(max_tokens=5), after)
            break
        except Unavailable:
            time.sleep(0.05)
    wait(after)
    assert after.completion.finish_reason == "length"
    assert s.observer.stalls == [True, False]
    assert running.num_final == 1 and queued.num_final == 1  # nothing more reached the failed sinks


def test_an_idle_loop_never_counts_as_stalled(serve):
    """No work, no stall: the idle loop beats every IDLE_WAIT_S, and a held runner without work is not stuck."""
    s = serve(stall_timeout_s=0.2)
    time.sleep(1.0)
    assert s.observer.stalls == [] and s.service.watch.stalled is None


# ---- one thread owns the engine ---------------------------------------------------------------
class ThreadRecordingRunner(GatedRunner):
    """Records the thread that built it and every thread that ran a step."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.built_on = threading.get_ident()
        self.stepped_on: set[int] = set()

    def execute(self, out):
        self.stepped_on.add(threading.get_ident())
        return super().execute(out)


def test_an_engine_builder_runs_on_the_loop_thread_with_every_step(kit, tokenizer):
    """The process's torch work stays on one thread (GenerationService's docstring says why)."""
    cfg = kit.make_config()
    made = []

    def build() -> LLMEngine:
        runner = ThreadRecordingRunner(kit.FakeRunner(cfg.num_kv_blocks, cfg.block_size))
        made.append(runner)
        return LLMEngine(cfg, runner, kit.ArgmaxSampler())

    service = GenerationService(build, tokenizer)
    try:
        assert service.engine.runner is made[0]
        sinks = [service.generate(f"thread {i}", SamplingParams(max_tokens=4), timeout=WAIT_S) for i in range(3)]
        assert all(sink.completion.num_output_tokens == 4 for sink in sinks)
        runner = made[0]
        assert runner.built_on == service._thread.ident != threading.get_ident()
        assert runner.stepped_on == {service._thread.ident}
    finally:
        service.shutdown(WAIT_S)
    kit.check_all_free(service.engine.scheduler)


def test_an_engine_builder_that_fails_raises_from_the_constructor(tokenizer):
    def build() -> LLMEngine:
        raise RuntimeError("no weights here")

    with pytest.raises(RuntimeError, match="no weights here"):
        GenerationService(build, tokenizer)
