"""The profile's tables: tokens/s per unit and variant, and the top operators by self CPU time (profile.md).

Every number is a median: of the timed samples for step times, and for an operator of its
self CPU time in each profiled unit (0 where a unit did not call it), so one preempted op
on a shared machine does not move it.
"""

from __future__ import annotations

import statistics
from pathlib import Path


def unit_tokens(key: str, settings: dict) -> int:
    """Tokens one unit computes for its output: B decodes, or the prefill prompt."""
    return int(key.split("=")[1]) if key.startswith("decode") else int(settings["prefill_len"])


def op_table(units: list[dict[str, list[float]]]) -> list[tuple[str, float, float]]:
    """(op, median self ms per unit, median calls per unit), largest first; a `total` row first."""
    names = {name for unit in units for name in unit}
    rows = [
        (
            name,
            statistics.median(u.get(name, [0.0, 0])[0] for u in units) / 1e3,
            statistics.median(u.get(name, [0.0, 0])[1] for u in units),
        )
        for name in names
    ]
    rows.sort(key=lambda r: -r[1])
    total = statistics.median(sum(v[0] for v in u.values()) for u in units) / 1e3
    return [("total (profiled unit)", total, statistics.median(sum(v[1] for v in u.values()) for u in units))] + rows


def _workers(result: dict, dtype: str) -> list[dict]:
    return [w for w in result["workers"] if w["dtype"] == dtype]


def throughput_lines(result: dict) -> list[str]:
    """One row per unit: each worker's tok/s (wall median), with current/baseline per dtype."""
    settings, workers = result["settings"], result["workers"]
    keys = list(workers[0]["times"])
    head = ["unit"] + [f"{w['variant']} {w['dtype']}" for w in workers]
    dtypes = list(dict.fromkeys(w["dtype"] for w in workers))
    if len({w["variant"] for w in workers}) > 1:
        head += [f"{d} current / baseline" for d in dtypes]
    if len(dtypes) > 1:
        head += [f"{v} bf16 / fp32" for v in dict.fromkeys(w["variant"] for w in workers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        rate = {
            (w["variant"], w["dtype"]): unit_tokens(key, settings) / _median(w["times"][key]["wall_s"]) for w in workers
        }
        row = [f"{key} tok/s"] + [f"{rate[(w['variant'], w['dtype'])]:.1f}" for w in workers]
        if len({w["variant"] for w in workers}) > 1:
            row += [f"{rate[('current', d)] / rate[('baseline', d)]:.2f}x" for d in dtypes]
        if len(dtypes) > 1:
            row += [
                f"{rate[(v, 'bfloat16')] / rate[(v, 'float32')]:.2f}x"
                for v in dict.fromkeys(w["variant"] for w in workers)
            ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def step_time_lines(result: dict) -> list[str]:
    """Per unit and worker: wall-clock median and fastest sample, CPU-time median (ms), and the sample count.

    The fastest sample is the best estimate of the step on a quiet machine; the median is what a shared one gave.
    """
    workers = result["workers"]
    lines = ["| unit | " + " | ".join(f"{w['variant']} {w['dtype']}" for w in workers) + " |"]
    lines.append("|" + "---|" * (len(workers) + 1))
    for key in workers[0]["times"]:
        cells = []
        for w in workers:
            t = w["times"][key]
            wall, cpu = _median(t["wall_s"]) * 1e3, _median(t["cpu_s"]) * 1e3
            cells.append(f"{wall:.1f} / {min(t['wall_s']) * 1e3:.1f} / {cpu:.1f} (n={len(t['wall_s'])})")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def top_op_lines(result: dict, dtype: str, key: str, top: int) -> list[str]:
    """The `top` operators of each worker of `dtype` for one unit, side by side (ms per unit, calls)."""
    workers = _workers(result, dtype)
    tables = {w["variant"]: {r[0]: r[1:] for r in op_table(w["ops"][key])} for w in workers}
    order: list[str] = []
    for w in workers:
        order += [r[0] for r in op_table(w["ops"][key])[: top + 1] if r[0] not in order]
    head = "| op | " + " | ".join(f"{w['variant']} ms | calls" for w in workers) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(workers))]
    for name in order:
        cells = []
        for w in workers:
            ms, calls = tables[w["variant"]].get(name, (0.0, 0))
            cells += [f"{ms:.2f}", f"{calls:g}"]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def write_reports(result: dict, out: Path, top: int) -> None:
    settings, machine = result["settings"], result["machine"]
    lines = [
        "# Engine step profile",
        "",
        f"{result['started']}, {machine['cpu']} ({machine['usable_cores']} cores, torch {machine['torch']}, "
        f"{result['workers'][0]['torch_threads']} threads per worker); load average "
        f"{machine['loadavg_at_start'][0]:.1f} at start, {result['loadavg_at_end'][0]:.1f} at end; the machine's CPU "
        f"{result['machine_busy_fraction']:.0%} busy while measuring (one worker runs at a time: at most "
        f"{result['workers'][0]['torch_threads'] / machine['usable_cores']:.0%} is ours); "
        f"{result['duration_s'] / 60:.0f} min.",
        "Variants: " + "; ".join(f"{k} = {v}" for k, v in result["variants"].items()) + ".",
        f"Decode units: one engine step of B sequences at ~{settings['context']} tokens of context; prefill: "
        f"a {settings['prefill_len']}-token prompt in chunks of {settings['chunk']} and its first token. Per worker "
        f"and unit, {settings['rounds']} round(s) x {settings['reps']} repetitions (decode: {settings['steps']} steps "
        f"each), workers interleaved; {settings['profile_reps']} more units each under torch.profiler.",
        "",
        "## Throughput (tokens/s from the wall-clock median)",
        "",
        *throughput_lines(result),
        "",
        "## Step times, ms: wall-clock median / fastest / median CPU time of the worker (all its threads)",
        "",
        *step_time_lines(result),
    ]
    for dtype in dict.fromkeys(w["dtype"] for w in result["workers"]):
        for key in result["workers"][0]["ops"]:
            lines += ["", f"## {dtype} {key}: top operators by self CPU time (median per unit)", ""]
            lines += top_op_lines(result, dtype, key, top)
    (out / "profile.md").write_text("\n".join(lines) + "\n")
    text = []
    for w in result["workers"]:
        for key, units in w["ops"].items():
            text += [
                f"== {w['variant']} {w['dtype']} {key} ({len(units)} profiled units)",
                f"{'op':60s} {'ms':>10s} {'calls':>8s}",
            ]
            text += [f"{name[:60]:60s} {ms:10.3f} {calls:8g}" for name, ms, calls in op_table(units)]
            text.append("")
    (out / "profile-ops.txt").write_text("\n".join(text))


def _median(values: list[float]) -> float:
    return statistics.median(values)
