"""Rollout guards: does the canary do worse than the stable version on the same window of traffic?

A window is what one version did between two scrapes of Triton's /metrics (`VersionWindow.of`):
requests and failures as the router counted them (routed and mirrored alike), the engine's
time-to-first-token and inter-token-latency histograms, and, for mirrored greedy requests,
how often the canary's output equalled the stable's. Each guard compares the canary's value
with a limit derived from the stable's on that same window:

    error_rate          canary failures / requests   <= stable's rate + max_error_rate_increase
    ttft_p95, itl_p95   canary p95 (histogram)        <= max(stable p95 * max_latency_ratio,
                                                             stable p95 + latency_slack_s)
    shadow_exact_match  identical greedy outputs      >= min_exact_match        (shadow step only)
    shadow_length_ratio canary / stable output chars  in [1 / max_length_ratio, max_length_ratio]

A guard with fewer than `min_samples` observations on either side is `waiting`: it neither
passes nor trips. For the latency guards an observation is a request (one that got its first
token): the inter-token gaps of a single request must not stand for a version. When the stable version served nothing in the window (the 100% step), its
numbers from the last window where it did (`baseline`) stand in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tritonrag import metrics
from tritonrag.triton.prom import Samples, quantile, total

PASS, TRIP, WAIT = "pass", "trip", "wait"


@dataclass(frozen=True)
class Thresholds:
    """How much worse than stable the canary may be, and how much evidence a verdict needs."""

    max_error_rate_increase: float = 0.02  # absolute: 2 points over the stable's error rate
    max_latency_ratio: float = 1.5  # canary p95 over stable p95 ...
    latency_slack_s: float = 0.05  # ... or this much over it, whichever is larger (histogram buckets are coarse)
    min_exact_match: float = 0.9  # share of mirrored greedy outputs identical to the stable's
    max_length_ratio: float = 1.25  # output length, canary over stable, either way
    min_samples: int = 20  # observations each side before a guard may pass or trip

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"threshold {name} must be a non-negative number, got {value!r}")
        if self.max_latency_ratio < 1 or self.max_length_ratio < 1:
            raise ValueError("max_latency_ratio and max_length_ratio must be >= 1")
        if self.min_exact_match > 1:
            raise ValueError(f"min_exact_match must be in [0, 1], got {self.min_exact_match}")

    @classmethod
    def from_dict(cls, data: dict) -> Thresholds:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown thresholds: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class VersionWindow:
    """One version's traffic in a window (counts; latencies as histogram samples for quantiles)."""

    requests: float = 0.0
    failures: float = 0.0
    ttft_count: float = 0.0
    ttft_p95: float | None = None
    itl_count: float = 0.0
    itl_p95: float | None = None
    compared: float = 0.0  # mirrored greedy requests compared with their primary (canary side only)
    exact: float = 0.0
    primary_chars: float = 0.0
    shadow_chars: float = 0.0

    @classmethod
    def of(cls, window: Samples, version: int, model: str = "generator") -> VersionWindow:
        """The version's numbers from a window of /metrics samples (`prom.grown` of two scrapes)."""
        labels = {"model": model, "version": str(version)}
        return cls(
            requests=total(window, metrics.ROUTER_REQUESTS.name, **labels),
            failures=total(window, metrics.ROUTER_FAILURES.name, **labels),
            ttft_count=total(window, f"{metrics.TTFT.name}_count", **labels),
            ttft_p95=quantile(window, metrics.TTFT.name, 0.95, **labels),
            itl_count=total(window, f"{metrics.ITL.name}_count", **labels),
            itl_p95=quantile(window, metrics.ITL.name, 0.95, **labels),
            compared=total(window, metrics.ROUTER_SHADOW_COMPARED.name, **labels),
            exact=total(window, metrics.ROUTER_SHADOW_EXACT.name, **labels),
            primary_chars=total(window, metrics.ROUTER_SHADOW_CHARS.name, side="primary", **labels),
            shadow_chars=total(window, metrics.ROUTER_SHADOW_CHARS.name, side="shadow", **labels),
        )

    @property
    def error_rate(self) -> float | None:
        return self.failures / self.requests if self.requests else None


@dataclass(frozen=True)
class GuardResult:
    """One guard on one window: the canary's value, the limit it is held to, the verdict and why."""

    name: str
    state: str  # PASS, TRIP or WAIT
    value: float | None
    threshold: float | None
    detail: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GuardResult:
        return cls(**data)

    def describe(self) -> str:
        return f"{self.name} {self.state}: {self.detail}"


def stable_numbers(stable: VersionWindow, min_samples: int) -> dict[str, float]:
    """The stable's error rate and p95s where the window holds enough of them (a later baseline)."""
    numbers = {}
    if stable.requests >= min_samples:
        numbers["error_rate"] = stable.failures / stable.requests
    if stable.ttft_count >= min_samples and stable.ttft_p95 is not None:
        numbers["ttft_p95"] = stable.ttft_p95
    if stable.ttft_count >= min_samples and stable.itl_p95 is not None:
        numbers["itl_p95"] = stable.itl_p95
    return numbers


def evaluate(
    canary: VersionWindow,
    stable: VersionWindow,
    limits: Thresholds,
    shadow: bool = False,
    baseline: dict[str, float] | None = None,
) -> list[GuardResult]:
    """Every guard on one window; the shadow-agreement guards only when `shadow` (a mirroring step)."""
    reference = {**(baseline or {}), **stable_numbers(stable, limits.min_samples)}
    results = [
        _error_rate(canary, reference.get("error_rate"), limits),
        _latency("ttft_p95", canary.ttft_p95, canary.ttft_count, reference.get("ttft_p95"), limits),
        _latency("itl_p95", canary.itl_p95, canary.ttft_count, reference.get("itl_p95"), limits),
    ]
    if shadow:
        results += _agreement(canary, limits)
    return results


def _error_rate(canary: VersionWindow, stable_rate: float | None, limits: Thresholds) -> GuardResult:
    if canary.requests < limits.min_samples or stable_rate is None:
        return GuardResult("error_rate", WAIT, canary.error_rate, None, _waiting(canary.requests, stable_rate, limits))
    rate, limit = canary.failures / canary.requests, stable_rate + limits.max_error_rate_increase
    detail = (
        f"canary {canary.failures:.0f}/{canary.requests:.0f} = {rate:.3f}, limit {limit:.3f} (stable {stable_rate:.3f})"
    )
    return GuardResult("error_rate", TRIP if rate > limit else PASS, rate, limit, detail)


def _latency(name: str, value: float | None, count: float, stable: float | None, limits: Thresholds) -> GuardResult:
    if count < limits.min_samples or value is None or stable is None:
        return GuardResult(name, WAIT, value, None, _waiting(count, stable, limits))
    limit = max(stable * limits.max_latency_ratio, stable + limits.latency_slack_s)
    detail = (
        f"canary {value * 1000:.0f} ms ({count:.0f} requests), "
        f"limit {limit * 1000:.0f} ms (stable {stable * 1000:.0f} ms)"
    )
    return GuardResult(name, TRIP if value > limit else PASS, value, limit, detail)


def _agreement(canary: VersionWindow, limits: Thresholds) -> list[GuardResult]:
    if canary.compared < limits.min_samples:
        why = f"{canary.compared:.0f}/{limits.min_samples} greedy mirrors compared"
        return [
            GuardResult("shadow_exact_match", WAIT, None, None, why),
            GuardResult("shadow_length_ratio", WAIT, None, None, why),
        ]
    share = canary.exact / canary.compared
    exact = GuardResult(
        "shadow_exact_match",
        TRIP if share < limits.min_exact_match else PASS,
        share,
        limits.min_exact_match,
        f"{canary.exact:.0f}/{canary.compared:.0f} = {share:.3f} identical, minimum {limits.min_exact_match:.3f}",
    )
    both_empty = not canary.primary_chars and not canary.shadow_chars
    ratio = 1.0 if both_empty else canary.shadow_chars / max(canary.primary_chars, 1.0)
    length = GuardResult(
        "shadow_length_ratio",
        PASS if 1 / limits.max_length_ratio <= ratio <= limits.max_length_ratio else TRIP,
        ratio,
        limits.max_length_ratio,
        f"canary/stable output length {ratio:.3f}, allowed 1/{limits.max_length_ratio:g}..{limits.max_length_ratio:g}",
    )
    return [exact, length]


def _waiting(count: float, stable: float | None, limits: Thresholds) -> str:
    if stable is None:
        return f"waiting: the stable version has < {limits.min_samples} samples in this window and no baseline"
    return f"waiting: {count:.0f}/{limits.min_samples} canary samples"
