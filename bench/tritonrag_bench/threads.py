"""`python -m tritonrag_bench.threads`: what it costs when the engine's torch work spans two threads.

    python -m tritonrag_bench.threads --dtype bfloat16,float32 --batch 1,8,32 --rounds 3

Every thread that runs a parallel torch operator gets its own OpenMP team. When a process
holds more OpenMP threads than it has cores, libgomp stops spin-waiting between parallel
regions and wakes its workers through the kernel each time instead. Three placements of one
engine, each in a fresh process, decode steps timed at each batch size:

- `main`: built and stepped on the main thread (the bench's engine target);
- `loop`: built and stepped on one other thread (GenerationService given a builder: the server);
- `split`: built on the main thread, stepped on another (GenerationService given a built engine).

Rounds rotate the placements so that a neighbour's load falls on all alike. Writes
<out>/threads.json and prints median step times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tritonrag.engine.config import EngineConfig
from tritonrag.engine.factory import build_engine
from tritonrag.paths import artifacts_dir, generator_weights_dir
from tritonrag.sampling import SamplingParams
from tritonrag_bench.engine import on_fresh_thread
from tritonrag_bench.machine import machine_info

PLACEMENTS = ("main", "loop", "split")
CONTEXT_TOKENS = 300
STEPS = 40


def _engine(dtype: str, batch: int):
    config = EngineConfig(
        model_dir=str(generator_weights_dir()),
        dtype=dtype,
        device="cpu",
        max_num_seqs=batch,
        max_num_batched_tokens=max(512, batch),
        enable_prefix_caching=False,
    )
    return build_engine(config)


def _decode_steps(engine, batch: int) -> list[float]:
    """Step times (s) of `batch` sequences decoding at ~CONTEXT_TOKENS of context, prefill not timed."""
    sampling = SamplingParams(max_tokens=STEPS + 8, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"r{i}", [100 + (i + j) % 5000 for j in range(CONTEXT_TOKENS)], sampling)
    while engine.scheduler.waiting or any(not seq.output_token_ids for seq in engine.scheduler.running):
        engine.step()  # prefill
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    while engine.has_unfinished():
        engine.step()
    return times


def worker(placement: str, dtype: str, batch: int) -> list[float]:
    """One placement in this (fresh) process: warm, then time decode steps."""
    if placement == "main":
        engine = _engine(dtype, batch)
        _decode_steps(engine, batch)
        return _decode_steps(engine, batch)
    if placement == "loop":

        def build_and_run() -> list[float]:
            engine = _engine(dtype, batch)
            _decode_steps(engine, batch)
            return _decode_steps(engine, batch)

        return on_fresh_thread(build_and_run)
    engine = _engine(dtype, batch)  # split
    on_fresh_thread(_decode_steps, engine, batch)
    return on_fresh_thread(_decode_steps, engine, batch)


def _measure(placement: str, dtype: str, batch: int) -> list[float]:
    command = [sys.executable, "-m", "tritonrag_bench.threads", "--worker", placement, dtype, str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonrag_bench.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16,float32")
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(artifacts_dir() / "bench"))
    parser.add_argument("--worker", nargs=3, metavar=("PLACEMENT", "DTYPE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        placement, dtype, batch = args.worker
        print(json.dumps(worker(placement, dtype, int(batch))))
        return 0
    cells = [(d, int(b)) for d in args.dtype.split(",") for b in args.batch.split(",")]
    samples: dict[str, list[float]] = {}
    total, done = args.rounds * len(cells) * len(PLACEMENTS), 0
    for round_no in range(args.rounds):
        for dtype, batch in cells:
            shift = (round_no + batch) % len(PLACEMENTS)
            for placement in PLACEMENTS[shift:] + PLACEMENTS[:shift]:
                key = f"{dtype} B={batch} {placement}"
                samples.setdefault(key, []).extend(_measure(placement, dtype, batch))
                done += 1
                print(f"[{done}/{total}] {key}: {statistics.median(samples[key]) * 1e3:.1f} ms", flush=True)
    medians = {key: statistics.median(values) * 1e3 for key, values in samples.items()}
    print(f"\nmedian decode step, ms ({STEPS} steps x {args.rounds} rounds, {CONTEXT_TOKENS} tokens of context)")
    print(f"{'cell':<18}" + "".join(f"{p:>9}" for p in PLACEMENTS) + "   split / loop")
    for dtype, batch in cells:
        row = [medians[f"{dtype} B={batch} {p}"] for p in PLACEMENTS]
        print(f"{dtype + ' B=' + str(batch):<18}" + "".join(f"{v:9.1f}" for v in row) + f"   {row[2] / row[1]:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(args.dtype), "steps": STEPS, "context_tokens": CONTEXT_TOKENS}
    result |= {"median_step_ms": medians, "samples_s": samples}
    (out / "threads.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'threads.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
