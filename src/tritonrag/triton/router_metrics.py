"""The router's metrics on Triton's /metrics endpoint: routing counters, the split, shadow agreement, the rollout.

Imported only inside tritonserver (it needs `triton_python_backend_utils`). Family names
come from tritonrag.metrics. The rollout gauges are drawn from the weights file's rollout
section, which every replica reads, so each replica shows the same step, guards and
decisions whichever driver took them.
"""

from __future__ import annotations

import math
import threading

import triton_python_backend_utils as pb_utils

from tritonrag import metrics
from tritonrag.triton.canary import RoutingConfig
from tritonrag.triton.custom_metrics import triton_family
from tritonrag.triton.guards import PASS, TRIP
from tritonrag.triton.rollout import ROLLBACK, RolloutState
from tritonrag.triton.shadow import Agreement

FAMILIES = {
    "requests": metrics.ROUTER_REQUESTS,
    "failures": metrics.ROUTER_FAILURES,
    "shadow_skipped": metrics.ROUTER_SHADOW_SKIPPED,
    "aborted": metrics.ROUTER_ABORTED,
    "rejected": metrics.ROUTER_REJECTED,
    "weight": metrics.ROUTER_WEIGHT,
    "rerouted": metrics.ROUTER_REROUTED,
    "up": metrics.ROUTER_VERSION_UP,
    "compared": metrics.ROUTER_SHADOW_COMPARED,
    "exact": metrics.ROUTER_SHADOW_EXACT,
    "chars": metrics.ROUTER_SHADOW_CHARS,
    "step": metrics.ROLLOUT_STEP,
    "guard_value": metrics.ROLLOUT_GUARD_VALUE,
    "guard_threshold": metrics.ROLLOUT_GUARD_THRESHOLD,
    "guard_ok": metrics.ROLLOUT_GUARD_OK,
    "decision": metrics.ROLLOUT_DECISION,
}
GUARD_STATES = {PASS: 1.0, TRIP: 0.0}  # waiting: -1


class RouterMetrics:
    """Counters and gauges labelled by the target model (and version, mode, role, guard)."""

    def __init__(self, target: str):
        # Made here, not at import: the stub that auto-completes a config imports model.py without MetricFamily.
        # Every metric call holds one lock (tritonrag.triton.custom_metrics: concurrent calls crash 2.51).
        make_family = triton_family(pb_utils)
        self.families = {key: make_family(family) for key, family in FAMILIES.items()}
        self.target = target
        self.metrics: dict[tuple, object] = {}
        self.lock = threading.Lock()

    def _metric(self, family: str, **labels):
        key = (family, *sorted(labels.items()))
        with self.lock:
            if key not in self.metrics:
                self.metrics[key] = self.families[family].Metric(labels={"model": self.target, **labels})
            return self.metrics[key]

    def count(self, family: str, version: int | None = None, mode: str | None = None) -> None:
        labels = {} if version is None else {"version": str(version), "mode": mode}
        self._metric(family, **labels).increment(1)

    def count_agreement(self, version: int, agreement: Agreement) -> None:
        """One compared greedy mirror of `version` (the canary)."""
        labels = {"version": str(version)}
        self._metric("compared", **labels).increment(1)
        if agreement.exact:
            self._metric("exact", **labels).increment(1)
        self._metric("chars", side="primary", **labels).increment(agreement.primary_chars)
        self._metric("chars", side="shadow", **labels).increment(agreement.shadow_chars)

    def show_split(self, config: RoutingConfig) -> None:
        shares = {("stable", config.stable_version): 1.0 - config.canary_weight}
        if config.canary_version is not None:
            shares[("canary", config.canary_version)] = config.canary_weight
            shares[("shadow", config.canary_version)] = config.shadow_weight
        known = [key for key in self.metrics if key[0] == "weight"]
        for key in known:  # roles a version no longer has drop to 0
            labels = dict(key[1:])
            if (labels["role"], int(labels["version"])) not in shares:
                self.metrics[key].set(0.0)
        for (role, version), share in shares.items():
            self._metric("weight", role=role, version=str(version)).set(share)

    def show_up(self, versions: list[int], dead: set[int]) -> None:
        """Whether each routed version's stub runs (1) or has exited (0)."""
        for version in {*versions, *dead}:
            self._metric("up", version=str(version)).set(0.0 if version in dead else 1.0)

    def show_rollout(self, state: RolloutState | None) -> None:
        """Step (-1 unless running), each guard of the last evaluation, and when each decision was taken."""
        self._metric("step").set(float(state.step) if state is not None and state.running else -1.0)
        if state is None:
            return
        for guard in state.guards:
            value = math.nan if guard.value is None else guard.value
            threshold = math.nan if guard.threshold is None else guard.threshold
            self._metric("guard_value", guard=guard.name).set(value)
            self._metric("guard_threshold", guard=guard.name).set(threshold)
            self._metric("guard_ok", guard=guard.name).set(GUARD_STATES.get(guard.state, -1.0))
        for decision in state.history:
            guard = ",".join(decision.tripped) if decision.action == ROLLBACK else ""
            self._metric("decision", action=decision.action, step=decision.step_name, guard=guard).set(decision.at)
