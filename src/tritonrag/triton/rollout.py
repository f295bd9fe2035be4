"""A guarded rollout: the canary's share grows step by step while its guards hold, and drops to 0 when one trips.

    shadow (mirror stable traffic, compare greedy outputs) -> 5% -> 25% -> 50% -> 100% -> promoted
                 \\____________ any guard trips: rolled back (weight 0, shadow off) ____________/

Each step is held for a window: at least `window_s` seconds and `min_requests` canary
requests (mirrored ones count in the shadow step). A driver (tritonrag.triton.rollout_driver:
the `canary rollout` CLI, or a router replica) evaluates the guards (tritonrag.triton.guards)
every `interval_s` on the window so far: a tripped guard rolls back at once; when the window
is complete and every guard passes, the next step begins (from the last, the canary is
promoted: it becomes the stable version).

The state is plain data kept in the weights file beside the split it sets (`to_dict` /
`from_dict`): the step, when it began, the guards of the last evaluation, every decision
with its reasons and numbers. So every replica shows the same rollout, and a restarted driver
continues from the step it was at (with a fresh window: a restart never shortens one).
`decide` and `apply` are pure functions of the state and the guards, tested without a server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tritonrag.triton.canary import RoutingConfig, promote, rollback, set_split
from tritonrag.triton.guards import PASS, TRIP, WAIT, GuardResult, Thresholds

RUNNING, PROMOTED, ROLLED_BACK, CANCELLED = "running", "promoted", "rolled_back", "cancelled"
HOLD, ADVANCE, PROMOTE, ROLLBACK, CANCEL = "hold", "advance", "promote", "rollback", "cancel"
HISTORY = 20  # decisions kept in the file


@dataclass(frozen=True)
class Step:
    """The split one step sets: the canary's share of routed traffic, the share of stable traffic mirrored."""

    name: str
    canary_weight: float
    shadow_weight: float = 0.0

    @property
    def is_shadow(self) -> bool:
        """Mirroring only: the canary answers no user; its outputs are compared with the stable's."""
        return self.canary_weight == 0.0 and self.shadow_weight > 0.0


DEFAULT_STEPS = (Step("shadow", 0.0, 1.0), Step("5%", 0.05), Step("25%", 0.25), Step("50%", 0.5), Step("100%", 1.0))


def parse_steps(text: str) -> tuple[Step, ...]:
    """'shadow,5,25,50,100' -> steps; 'shadow:0.5' mirrors half the stable traffic; numbers are percent."""
    steps = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith("shadow"):
            share = float(item.split(":", 1)[1]) if ":" in item else 1.0
            steps.append(Step("shadow" if share == 1.0 else f"shadow {share:g}", 0.0, share))
            continue
        try:
            percent = float(item.rstrip("%"))
        except ValueError as exc:
            raise ValueError(f"a step is 'shadow', 'shadow:<share>' or a percentage, got {item!r}") from exc
        if not 0 < percent <= 100:
            raise ValueError(f"a step's percentage must be in (0, 100], got {item!r}")
        steps.append(Step(f"{percent:g}%", percent / 100))
    if not steps:
        raise ValueError("a rollout needs at least one step")
    return tuple(steps)


@dataclass(frozen=True)
class RolloutPlan:
    """The steps and how long each is held, how often guards are evaluated, and their thresholds."""

    steps: tuple[Step, ...] = DEFAULT_STEPS
    window_s: float = 300.0  # each step lasts at least this long ...
    min_requests: int = 100  # ... and until the canary served this many requests in it
    interval_s: float = 5.0  # guards are evaluated this often
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a rollout needs at least one step")
        for step in self.steps:
            for value in (step.canary_weight, step.shadow_weight):
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"step {step.name}: weights must be in [0, 1]")
        if self.window_s < 0 or self.min_requests < 0 or self.interval_s <= 0:
            raise ValueError("window_s and min_requests must be >= 0 and interval_s > 0")

    @property
    def lease_s(self) -> float:
        """How long a driver's claim lasts without renewal (three missed evaluations, plus a slow scrape)."""
        return 3 * self.interval_s + 10.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RolloutPlan:
        values = dict(data)
        values["steps"] = tuple(Step(**step) for step in data.get("steps", []))
        values["thresholds"] = Thresholds.from_dict(data.get("thresholds", {}))
        return cls(**values)


@dataclass(frozen=True)
class Decision:
    """What a driver decided at one evaluation, at which step, why, and on which numbers."""

    action: str  # HOLD, ADVANCE, PROMOTE, ROLLBACK or CANCEL
    step: int
    step_name: str
    reason: str
    at: float
    driver: str = ""
    guards: tuple[GuardResult, ...] = ()

    @property
    def tripped(self) -> list[str]:
        return [g.name for g in self.guards if g.state == TRIP]

    def describe(self) -> str:
        return f"{self.action} at step {self.step_name}: {self.reason}"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "guards": [g.to_dict() for g in self.guards]}

    @classmethod
    def from_dict(cls, data: dict) -> Decision:
        return cls(**{**data, "guards": tuple(GuardResult.from_dict(g) for g in data.get("guards", []))})


@dataclass(frozen=True)
class RolloutState:
    """A rollout as the weights file holds it."""

    stable_version: int
    canary_version: int
    plan: RolloutPlan
    started_at: float
    step_started_at: float
    status: str = RUNNING
    step: int = 0
    revision: int = 1  # grows with every change of step or status: a driver's window belongs to one revision
    lease: dict | None = None  # {"holder": driver id, "until": time}: who evaluates the guards now
    window: dict | None = None  # the holder's current window: started_at, evaluated_at, requests per side
    guards: tuple[GuardResult, ...] = ()  # the last evaluation
    baseline: dict[str, float] = field(default_factory=dict)  # the stable's numbers where it last had traffic
    last_decision: Decision | None = None  # the last decision other than hold
    history: tuple[Decision, ...] = ()

    @property
    def current(self) -> Step:
        return self.plan.steps[self.step]

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["plan"] = self.plan.to_dict()
        data["guards"] = [g.to_dict() for g in self.guards]
        data["last_decision"] = self.last_decision.to_dict() if self.last_decision else None
        data["history"] = [d.to_dict() for d in self.history]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RolloutState:
        values = dict(data)
        values["plan"] = RolloutPlan.from_dict(data["plan"])
        values["guards"] = tuple(GuardResult.from_dict(g) for g in data.get("guards", []))
        values["last_decision"] = Decision.from_dict(data["last_decision"]) if data.get("last_decision") else None
        values["history"] = tuple(Decision.from_dict(d) for d in data.get("history", []))
        return cls(**values)

    def describe(self) -> str:
        steps = " -> ".join(s.name for s in self.plan.steps)
        where = f"step {self.step + 1}/{len(self.plan.steps)} ({self.current.name})"
        return f"rollout of version {self.canary_version} over {self.stable_version}: {self.status}, {where}; {steps}"


def start(
    config: RoutingConfig, canary_version: int, plan: RolloutPlan, now: float
) -> tuple[RoutingConfig, RolloutState]:
    """The split and state of a new rollout at its first step."""
    if canary_version == config.stable_version:
        raise ValueError(f"version {canary_version} is already the stable version")
    state = RolloutState(config.stable_version, canary_version, plan, started_at=now, step_started_at=now)
    return split_for(state), state


def split_for(state: RolloutState) -> RoutingConfig:
    step = state.current
    return RoutingConfig(state.stable_version, state.canary_version, step.canary_weight, step.shadow_weight)


def decide(
    state: RolloutState, guards: list[GuardResult], elapsed: float, canary_requests: float, now: float, driver: str = ""
) -> Decision:
    """Roll back on any tripped guard; advance (or promote from the last step) once the window is
    complete and every guard passes; otherwise hold, saying what is awaited."""
    plan, step = state.plan, state.current

    def decision(action: str, reason: str) -> Decision:
        return Decision(action, state.step, step.name, reason, now, driver, tuple(guards))

    tripped = [g for g in guards if g.state == TRIP]
    if tripped:
        return decision(ROLLBACK, "; ".join(g.describe() for g in tripped))
    awaited = []
    if elapsed < plan.window_s:
        awaited.append(f"window {elapsed:.0f}/{plan.window_s:g} s")
    if canary_requests < plan.min_requests:
        awaited.append(f"{canary_requests:.0f}/{plan.min_requests} canary requests")
    awaited += [g.describe() for g in guards if g.state == WAIT]
    if awaited:
        return decision(HOLD, "; ".join(awaited))
    passed = ", ".join(f"{g.name} {g.value:.3g} (limit {g.threshold:.3g})" for g in guards if g.state == PASS)
    last = state.step == len(plan.steps) - 1
    return decision(PROMOTE if last else ADVANCE, f"{canary_requests:.0f} canary requests in {elapsed:.0f} s; {passed}")


def apply(
    config: RoutingConfig, state: RolloutState, decision: Decision, stable_numbers: dict[str, float] | None = None
) -> tuple[RoutingConfig, RolloutState]:
    """The split and state after `decision` (hold: only the guards and baseline change)."""
    baseline = {**state.baseline, **(stable_numbers or {})}
    state = dataclasses.replace(state, guards=decision.guards, baseline=baseline)
    if decision.action == HOLD:
        return config, state
    state = _record(state, decision)
    if decision.action == ROLLBACK:
        return rollback(config), dataclasses.replace(state, status=ROLLED_BACK)
    if decision.action == CANCEL:
        return config, dataclasses.replace(state, status=CANCELLED)
    if decision.action == PROMOTE:
        return promote(set_split(config, canary_weight=1.0)), dataclasses.replace(state, status=PROMOTED)
    state = dataclasses.replace(state, step=state.step + 1, step_started_at=decision.at, window=None, guards=())
    return split_for(state), state


def cancel(state: RolloutState, why: str, now: float) -> RolloutState:
    """An operator changed the split by hand: the rollout stops where it is and says so."""
    decision = Decision(CANCEL, state.step, state.current.name, why, now, "operator")
    return dataclasses.replace(_record(state, decision), status=CANCELLED)


def _record(state: RolloutState, decision: Decision) -> RolloutState:
    return dataclasses.replace(
        state,
        revision=state.revision + 1,
        last_decision=decision,
        history=(state.history + (decision,))[-HISTORY:],
    )
