"""The verdict after the traffic: drain the engine, then check nothing leaked, hung or went untyped.

A gating check failing makes the soak exit 1. What happened to the killed stub is reported as a
finding (not gating): Triton 2.51's Python backend restarts a dead stub only for non-decoupled
models (python_be.cc), and the generator is decoupled.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from tritonrag_bench.soak import probes
from tritonrag_bench.soak.outcomes import HUNG, OK
from tritonrag_bench.soak.runner import Soak


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    gating: bool = True


def drain(soak: Soak, dead: set[str]) -> tuple[dict[str, dict[str, float]], float]:
    """Poll the engine gauges until every live version runs, waits and holds nothing, or drain_s passes."""
    start = time.monotonic()
    while True:
        gauges = probes.engine_gauges(soak.endpoints.metrics)
        live = {v: g for v, g in gauges.items() if v not in dead}
        if live and all(not any(g.values()) for g in live.values()):
            return gauges, time.monotonic() - start
        if time.monotonic() - start > soak.settings.drain_s or not soak.endpoints.alive():
            return gauges, time.monotonic() - start
        time.sleep(1.0)


def dead_versions(soak: Soak) -> set[str]:
    """The killed version, if it never served again (its gauges are the dead stub's last values)."""
    watch = soak.watch
    return {str(watch.version)} if watch.killed_at is not None and watch.recovered_at is None else set()


def verdict(soak: Soak) -> tuple[list[Check], dict]:
    """Every check, and the measurements behind them (gauges after the drain, readiness, plain requests)."""
    if soak.crashed is None and not soak.endpoints.alive():
        soak.crashed = soak.endpoints.log_tail() or "tritonserver exited"
    dead = dead_versions(soak)
    gauges, drained_s = drain(soak, dead)
    ready = probes.readiness(soak.endpoints.http)
    plain = probes.plain_requests(soak.target) if soak.endpoints.alive() else {}
    outcomes = soak.ledger.snapshot()
    killed_at = soak.watch.killed_at
    hung = [o for o in outcomes if o.code == HUNG]
    # In flight when the stub died: such a call may have been in the dead stub, which never answers it.
    at_kill = [o for o in hung if killed_at is not None and o.start < killed_at]
    hung = [o for o in hung if o not in at_kill]
    unexpected = [o for o in outcomes if not o.expected and o.code != HUNG]
    live = {v: g for v, g in gauges.items() if v not in dead}
    checks = [
        Check("server up", soak.crashed is None and soak.endpoints.alive(), "tritonserver still running"),
        Check(
            "no hung call (outside the kill)",
            not hung,
            _by_scenario(hung) or f"every call ended within {soak.settings.deadline_s:.0f} s",
        ),
        Check("every error typed", not unexpected, _by_scenario(unexpected) or "each error as its scenario expects"),
        Check(
            "engine drained (running 0, waiting 0, KV blocks in use 0)",
            bool(live) and all(not any(g.values()) for g in live.values()),
            _gauge_text(gauges, dead) + f" after {drained_s:.0f} s",
        ),
        Check("server and models ready", bool(ready) and all(ready.values()), _ready_text(ready)),
        Check(
            "plain llm and rag answered",
            bool(plain) and all(c.code == OK for c in plain.values()),
            ", ".join(f"{k} {c.code}" for k, c in plain.items()) or "server gone",
        ),
    ]
    if killed_at is not None:
        checks.append(
            Check(
                "calls in flight at the kill ended",
                not at_kill,
                (f"never ended: {_by_scenario(at_kill)}" if at_kill else "every one ended")
                + f" (killed at {killed_at:.0f} s)",
            )
        )
        checks.append(_kill_check(soak))
    measured = {"gauges": gauges, "drained_s": round(drained_s, 1), "ready": ready, "dead_versions": sorted(dead)}
    measured["plain"] = {k: {"code": c.code, "message": c.message} for k, c in plain.items()}
    return checks, measured


def _kill_check(soak: Soak) -> Check:
    watch = soak.watch
    version = watch.version
    still_ready = probes.version_ready(soak.endpoints.http, version)
    if watch.recovered_at is not None:
        detail = f"served again {watch.recovered_at - watch.killed_at:.0f} s after the kill"
    else:
        seen = Counter(code for _, code, _ in watch.probes)
        detail = (
            f"never served again ({len(watch.probes)} pinned probes: "
            + ", ".join(f"{c} {n}" for c, n in seen.items())
            + f"); Triton reports the version {'READY' if still_ready else 'not ready'}"
        )
    return Check(
        f"generator v{version} serves again after its stub was killed", watch.recovered_at is not None, detail, False
    )


def _by_scenario(outcomes) -> str:
    if not outcomes:
        return ""
    counts = Counter((o.scenario, o.code) for o in outcomes)
    return "; ".join(f"{s} {c} x{n}" for (s, c), n in counts.most_common(8))


def _gauge_text(gauges: dict, dead: set[str]) -> str:
    if not gauges:
        return "/metrics unreachable"
    return "; ".join(
        f"v{v}{' (dead stub, last values)' if v in dead else ''}: running {g['running']:.0f}, "
        f"waiting {g['waiting']:.0f}, KV {g['kv']:.2%}"
        for v, g in gauges.items()
    )


def _ready_text(ready: dict[str, bool]) -> str:
    down = [name for name, ok in ready.items() if not ok]
    return "all ready" if not down else "not ready: " + ", ".join(down)
