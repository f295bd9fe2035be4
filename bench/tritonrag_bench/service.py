"""The service target: GenerationService in-process (loop thread, detokenizer, sinks), the Triton path minus Triton."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

from tritonrag.engine.factory import build_engine
from tritonrag.engine.serving import GenerationService
from tritonrag_bench.client_threads import run_client_threads
from tritonrag_bench.engine import engine_config, greedy, warm_engine
from tritonrag_bench.records import RequestRecord
from tritonrag_bench.terminal import say_level
from tritonrag_bench.workload import BenchRequest, BenchSettings


class TimingSink:
    """A GenerationService sink that timestamps deltas and keeps the completion's token count."""

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.done = threading.Event()
        self.error: Exception | None = None

    def send_delta(self, text: str) -> None:
        self.record.token_times.append(time.monotonic())

    def finish(self, text: str, completion) -> None:
        now = time.monotonic()
        if text:
            self.record.token_times.append(now)
        self.record.finish, self.record.num_output_tokens = now, completion.num_output_tokens
        self.done.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done.set()

    def is_cancelled(self) -> bool:
        return False


def bench_service(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], tokenizer, corpus) -> dict:
    """GenerationService in-process (loop thread, detokenizer, sinks): the Triton path minus Triton."""

    def build_warm():  # on the service's loop thread, which runs all of the engine's torch work
        engine = build_engine(engine_config(settings))
        warm_engine(engine, tokenizer, corpus)
        return engine

    service = GenerationService(build_warm, tokenizer)

    def one(_client, r: BenchRequest) -> RequestRecord:
        record = RequestRecord(r.request_id, len(r.prompt_ids), r.max_tokens, time.monotonic())
        sink = TimingSink(record)
        service.submit(r.request_id, r.prompt_text, greedy(r.max_tokens), sink)
        sink.done.wait()
        if sink.error is not None:
            raise sink.error
        return record

    results = {}
    try:
        for c, requests in workloads.items():
            results[str(c)] = run_client_threads(requests, c, f"service c={c}", one, nullcontext)
            say_level("service", c, results[str(c)])
    finally:
        service.shutdown()
    return results
