"""Text views of a guarded rollout for the canary CLI: the state as `canary status` shows it, decisions as they come."""

from __future__ import annotations

import time

from tritonrag.triton.guards import GuardResult
from tritonrag.triton.rollout import HOLD, Decision, RolloutState


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def render_guards(guards: tuple[GuardResult, ...] | list[GuardResult], indent: str = "  ") -> list[str]:
    lines = [f"{indent}{'guard':<20} {'state':<5} {'value':>9} {'limit':>9}  detail"]
    for guard in guards:
        lines.append(
            f"{indent}{guard.name:<20} {guard.state:<5} {_number(guard.value):>9} {_number(guard.threshold):>9}  "
            f"{guard.detail}"
        )
    return lines


def render_rollout(state: RolloutState, now: float | None = None) -> str:
    """The rollout's step, the current window, each guard's value and limit, the last decision."""
    now = time.time() if now is None else now
    plan = state.plan
    lines = [state.describe()]
    lines.append(
        f"  each step: >= {plan.window_s:g} s and >= {plan.min_requests} canary requests; "
        f"guards every {plan.interval_s:g} s"
    )
    window = state.window or {}
    if state.running and window:
        lines.append(
            f"  window: {now - window['started_at']:.0f} s, canary requests {window.get('canary_requests', 0):.0f}, "
            f"stable {window.get('stable_requests', 0):.0f}; driver {window.get('driver', '-')}, "
            f"evaluated {now - window['evaluated_at']:.0f} s ago"
        )
    if state.running and state.lease:
        lines.append(f"  lease: {state.lease['holder']} until {state.lease['until'] - now:+.0f} s")
    if state.guards:
        lines += render_guards(state.guards)
    if state.last_decision:
        lines.append("  last decision: " + render_decision(state.last_decision, now=now))
    return "\n".join(lines)


def render_decision(decision: Decision, start: float | None = None, now: float | None = None) -> str:
    """One decision: when (seconds since `start`, or ago), what, why."""
    if start is not None:
        when = f"[{decision.at - start:7.1f}s]"
    else:
        when = f"({(now or time.time()) - decision.at:.0f} s ago, {time.strftime('%H:%M:%S', time.localtime(decision.at))})"
    by = f" by {decision.driver}" if decision.driver else ""
    return f"{when} {decision.describe()}{by if decision.action != HOLD else ''}"
