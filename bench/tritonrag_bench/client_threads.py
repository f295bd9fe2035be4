"""Closed-loop client threads draining one request queue: the load of the service and triton targets."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from tritonrag_bench.records import RequestRecord, level_metrics
from tritonrag_bench.terminal import progress_bar
from tritonrag_bench.workload import BenchRequest


def run_client_threads(
    requests: list[BenchRequest],
    concurrency: int,
    label: str,
    one: Callable[[object, BenchRequest], RequestRecord],
    open_client: Callable[[], object],
) -> dict:
    """`concurrency` closed-loop client threads draining one queue; `one(client, request)` runs a request."""
    todo: queue.Queue[BenchRequest] = queue.Queue()
    for r in requests:
        todo.put(r)
    done: list[RequestRecord] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_loop(bar, task) -> None:
        try:
            with open_client() as client:
                while True:
                    try:
                        r = todo.get_nowait()
                    except queue.Empty:
                        return
                    record = one(client, r)
                    with lock:
                        done.append(record)
                    bar.advance(task)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    with progress_bar() as bar:
        task = bar.add_task(label, total=len(requests))
        start = time.monotonic()
        threads = [threading.Thread(target=client_loop, args=(bar, task), daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end = time.monotonic()
    if errors:
        raise RuntimeError(f"{label}: {len(errors)} client(s) failed") from errors[0]
    return level_metrics(done, start, end)
