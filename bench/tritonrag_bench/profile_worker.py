"""One engine in its own process, timing and profiling step units on command (tritonrag_bench.profile drives it).

Why a process per engine: the profile compares a baseline revision of the engine with the
working tree, and two versions of the `tritonrag` package cannot share one interpreter. The
driver runs the workers in lockstep (one works while the others wait on their pipe), so a
neighbour's load on the shared machine falls on every variant alike, as in one process.

Units, each timed by wall clock and by this process's CPU time:
    decode B    one engine step of B sequences decoding at ~`context` tokens of context
    prefill     every step that prefills one `prefill_len`-token prompt (chunks of
                `chunk` tokens, prefix cache off) and samples its first token

Protocol: one JSON command per stdin line; one reply per command on stdout, prefixed by
REPLY (the profiler's own prints may share stdout).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.factory import build_engine, load_tokenizer
from tritonrag_bench.engine import greedy, warm_engine
from tritonrag_bench.runtimes import start_decodes
from tritonrag_bench.workload import corpus_token_ids, make_text

REPLY = "@@profile-worker "
OUTSIDE_OPS = "(outside torch ops: Python, unregistered C++)"


class Worker:
    """The engine, its prompts, and the decoding batch currently set up in it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        config = EngineConfig(
            model_dir=args.model_dir,
            dtype=args.dtype,
            max_num_seqs=args.max_batch,
            max_num_batched_tokens=args.chunk,
            max_model_len=args.max_model_len,
            kv_cache_memory_bytes=args.kv_bytes,
            enable_prefix_caching=False,
        )
        self.engine = build_engine(config)
        tokenizer = load_tokenizer(args.model_dir)
        corpus = corpus_token_ids(tokenizer)
        rng = random.Random(args.seed)
        self.contexts = [
            make_text(tokenizer, corpus, rng, args.context + 8)[1][: args.context] for _ in range(args.max_batch)
        ]
        self.prompt = make_text(tokenizer, corpus, rng, args.prefill_len + 16)[1][: args.prefill_len]
        warm_engine(self.engine, tokenizer, corpus)
        self.decoding: list[str] = []
        self.prefills = 0

    def unit(self, name: str, batch: int) -> Callable[[], None]:
        """The callable of one unit, its set-up (untimed) done."""
        if name == "decode":
            if len(self.decoding) != batch:
                self._stop_decodes()
                self.decoding = start_decodes(self.engine, self.contexts[:batch])
            return self.engine.step
        if name == "prefill":
            self._stop_decodes()
            return self._prefill
        raise ValueError(f"unknown unit {name!r}")

    def _stop_decodes(self) -> None:
        for request_id in self.decoding:
            self.engine.abort(request_id)
        self.decoding = []
        while self.engine.has_unfinished():
            self.engine.step()

    def _prefill(self) -> None:
        self.prefills += 1
        self.engine.add_request(f"prefill-{self.prefills}", self.prompt, greedy(1))
        while self.engine.has_unfinished():
            self.engine.step()

    def time_units(self, name: str, batch: int, count: int) -> dict:
        fn = self.unit(name, batch)
        wall, cpu = [], []
        for _ in range(count):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        return {"wall_s": wall, "cpu_s": cpu}

    def profile_units(self, name: str, batch: int, count: int) -> dict:
        """Each unit under its own torch.profiler: per op, self CPU time (us) and calls, unit by unit.

        The profiler's "self CPU" is the op's wall time on the calling thread (intra-op threads included).
        """
        fn = self.unit(name, batch)
        per_unit: list[dict[str, list[float]]] = []
        for _ in range(count):
            start = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            wall_us = (time.perf_counter() - start) * 1e6
            ops = {e.key: [e.self_cpu_time_total, e.count] for e in prof.key_averages() if e.self_cpu_time_total > 0}
            # Python, and C++ called outside torch's dispatcher: the unit's wall time no op accounts for
            ops[OUTSIDE_OPS] = [max(wall_us - sum(us for us, _ in ops.values()), 0.0), 0]
            per_unit.append(ops)
        return {"ops": per_unit}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tritonrag_bench.profile_worker")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--dtype", required=True)
    p.add_argument("--context", type=int, default=300)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--prefill-len", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-bytes", type=int, default=2**30)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    worker = Worker(args)
    reply({"ready": True, "torch_threads": torch.get_num_threads()})
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        action = worker.profile_units if command.get("profile") else worker.time_units
        reply(action(command["unit"], command.get("batch", 0), command["count"]))
    return 0


def reply(message: dict) -> None:
    sys.stdout.write(REPLY + json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
