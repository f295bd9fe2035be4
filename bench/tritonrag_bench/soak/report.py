"""The soak's numbers: counts by scenario and code, latency percentiles, the timeline and the checks,
as a dict (result.json), terminal text and Markdown (result.md, the README's table)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from tritonrag_bench.soak.checks import Check
from tritonrag_bench.soak.outcomes import CODES, OK, Outcome
from tritonrag_bench.soak.runner import Soak

# Latency is reported for calls that ran to their end: not cancels, disconnects or refusals.
TIMED = ("llm_stream", "rag_stream", "llm_http", "llm_http_stream", "rag_http_stream", "burst_llm", "burst_rag")


def _percentiles(values: list[float]) -> list[float] | None:
    if not values:
        return None
    return [round(float(v) * 1000, 1) for v in np.percentile(values, (50, 90, 99))]


def latency(outcomes: list[Outcome]) -> dict[str, dict]:
    """TTFT and total time (ms p50/p90/p99) of completed ordinary calls, by route (bursts apart)."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.code == OK and o.scenario in TIMED:
            groups[f"{o.route}{' (burst)' if o.scenario.startswith('burst') else ''}"].append(o)
    return {
        route: {
            "n": len(group),
            "ttft_ms": _percentiles([o.ttft for o in group if o.ttft is not None]),
            "total_ms": _percentiles([o.total for o in group]),
        }
        for route, group in sorted(groups.items())
    }


def summary(soak: Soak, checks: list[Check], measured: dict, meta: dict) -> dict:
    outcomes = soak.ledger.snapshot()
    by_scenario: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        by_scenario[o.scenario][o.code] += 1
    served: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        if o.code == OK and o.served_version is not None:
            served[o.phase][str(o.served_version)] += 1
    odd = [o for o in outcomes if not o.expected]
    samples: dict[str, str] = {}
    for o in outcomes:
        if o.message:
            samples.setdefault(f"{o.scenario} {o.code}", o.message)
    return {
        **meta,
        "calls": len(outcomes),
        "codes": dict(Counter(o.code for o in outcomes)),
        "by_scenario": {name: dict(counts) for name, counts in sorted(by_scenario.items())},
        "latency": latency(outcomes),
        "served_version_by_phase": {phase: dict(c) for phase, c in served.items()},
        "events": [vars(e) for e in soak.events],
        "kill": vars(soak.watch) if soak.watch.killed_at is not None else None,
        "checks": [vars(c) for c in checks],
        "passed": all(c.passed for c in checks if c.gating),
        "unexpected": [
            {"scenario": o.scenario, "code": o.code, "phase": o.phase, "at": round(o.start, 1), "message": o.message}
            for o in odd[:40]
        ],
        "messages": dict(sorted(samples.items())),  # the first message of each scenario and code
        "measured": measured,
        "server_log_tail": soak.crashed,
    }


def _ms(values: list[float] | None) -> str:
    return "-" if values is None else " / ".join(f"{v:.0f}" for v in values)


def markdown(result: dict) -> str:
    codes = [c for c in CODES if any(c in row for row in result["by_scenario"].values())]
    lines = [
        f"Soak of {result['minutes']:g} min, {result['concurrency']} workers + bursts of {result['burst']}: "
        f"{result['calls']} calls ({result['server']}, commit {result['commit']}). "
        f"**{'PASSED' if result['passed'] else 'FAILED'}**",
        "",
        "| scenario | " + " | ".join(codes) + " |",
        "|---|" + "---|" * len(codes),
    ]
    for name, row in result["by_scenario"].items():
        lines.append(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in codes) + " |")
    total = Counter()
    for row in result["by_scenario"].values():
        total.update(row)
    lines.append("| **all** | " + " | ".join(f"**{total.get(c, 0)}**" for c in codes) + " |")
    lines += ["", "| route (completed calls) | n | TTFT p50 / p90 / p99 (ms) | total p50 / p90 / p99 (ms) |"]
    lines.append("|---|---|---|---|")
    for route, row in result["latency"].items():
        lines.append(f"| {route} | {row['n']} | {_ms(row['ttft_ms'])} | {_ms(row['total_ms'])} |")
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    for check in result["checks"]:
        mark = ("pass" if check["passed"] else "FAIL") if check["gating"] else ("yes" if check["passed"] else "no")
        lines.append(f"| {check['name']} | {mark} | {check['detail']} |")
    lines += ["", "Timeline:", ""]
    lines += [f"- {e['at']:.0f} s: {e['what']}{': ' + e['detail'] if e['detail'] else ''}" for e in result["events"]]
    if result["unexpected"]:
        lines += ["", "Unexpected outcomes (first 40):", ""]
        lines += [
            f"- {u['at']:.0f} s {u['scenario']} {u['code']} ({u['phase']}): {u['message']}"
            for u in result["unexpected"]
        ]
    if result["server_log_tail"]:
        lines += ["", "tritonserver exited; its log's tail:", "", "```", result["server_log_tail"], "```"]
    return "\n".join(lines) + "\n"
