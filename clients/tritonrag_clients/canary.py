"""Show and change the generator's canary split: per-version traffic, errors and latency, set/promote/rollback/rollout.

    python -m tritonrag_clients.canary status [--interval 10]
    python -m tritonrag_clients.canary set --canary-weight 0.1 [--canary-version 2] [--stable-version 1] [--shadow 0.2]
    python -m tritonrag_clients.canary shadow 0.2
    python -m tritonrag_clients.canary promote
    python -m tritonrag_clients.canary rollback
    python -m tritonrag_clients.canary rollout [--canary-version 2] [--steps shadow,5,25,50,100] [--window 300]
                                               [--min-requests 100] [--detach | --resume]

Changes are written to the router's weights file (`--file`, default $TRITONRAG_CANARY_FILE,
else `$TRITONRAG_ARTIFACTS/canary.json`, the path in the `llm` model's config.pbtxt), which
the router re-reads on change: no restart, no reload, in-flight streams untouched. Before
writing, every version the new split names is checked to be ready on the server
(`--no-check` skips it). `status` reads Triton's /metrics: the router's counters and the
split in force, Triton's per-version counters and the engine's latency histograms, and the
rollout in the weights file (step, guards, last decision).

`rollout` moves the canary through the steps while its guards hold (tritonrag.triton.rollout)
and rolls it back the moment one trips. In the foreground it drives the rollout itself from
every `--metrics-url` (give each replica's), printing each decision; exit status 0 promoted,
3 rolled back, 4 cancelled. `--detach` writes the first step and leaves the driving to the
routers (their rollout mode); `--resume` drives a rollout already in the file. A manual
set/shadow/promote/rollback cancels a running rollout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import requests

from tritonrag import metrics
from tritonrag.defaults import GENERATOR_MODEL, LLM_MODEL
from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir
from tritonrag.triton.canary import CANARY_FILE_ENV, RoutingConfig, promote, read_config, rollback, set_split
from tritonrag.triton.guards import Thresholds
from tritonrag.triton.rollout import HOLD, PROMOTED, ROLLED_BACK, RolloutPlan, parse_steps
from tritonrag.triton.rollout_driver import RolloutDriver, begin, driver_id, read_state, stop_by_hand
from tritonrag_clients.prom import Samples, parse_metrics, quantile, scrape, total  # noqa: F401 - parse_metrics: tests
from tritonrag_clients.rollout_view import render_decision, render_guards, render_rollout

ROUTER = LLM_MODEL  # the public LLM routes between the generator's versions


# ---- reading /metrics (parsing and quantiles: tritonrag_clients.prom) -------------------------------


def delta(after: Samples, before: Samples) -> Samples:
    """Counter and histogram growth between two scrapes (gauges: the later value)."""
    return {
        key: value - before.get(key, 0.0) if not key[0].endswith("_weight") else value for key, value in after.items()
    }


def version_rows(samples: Samples, model: str = GENERATOR_MODEL) -> list[dict]:
    """One row per generator version seen on the endpoint."""
    versions = sorted(
        {dict(ls)["version"] for (n, ls) in samples if dict(ls).get("model") == model and "version" in dict(ls)},
        key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v),
    )
    rows = []
    for version in versions:
        labels = {"model": model, "version": version}
        routed = {
            mode: total(samples, metrics.ROUTER_REQUESTS.name, mode=mode, **labels) for mode in metrics.ROUTING_MODES
        }
        failures = total(samples, metrics.ROUTER_FAILURES.name, **labels)
        sent = sum(routed.values())
        rows.append(
            {
                "version": version,
                "roles": {
                    dict(ls)["role"]: v
                    for (n, ls), v in samples.items()
                    if n == metrics.ROUTER_WEIGHT.name and labels.items() <= ls
                },
                "routed": routed,
                "failures": failures,
                "error_rate": failures / sent if sent else None,
                "triton_success": total(samples, metrics.TRITON_SUCCESS, **labels),
                "triton_failure": total(samples, metrics.TRITON_FAILURE, **labels),
                "e2e": [quantile(samples, metrics.E2E.name, q, **labels) for q in (0.5, 0.95, 0.99)],
                "ttft": [quantile(samples, metrics.TTFT.name, q, **labels) for q in (0.5, 0.95, 0.99)],
            }
        )
    return rows


def render_status(config: RoutingConfig, source: str, rows: list[dict], window: float | None) -> str:
    def ms(values):
        return "/".join("-" if v is None else f"{v * 1000:.0f}" for v in values)

    lines = [f"split ({source}): {config.describe()}"]
    in_force = {row["version"]: row["roles"] for row in rows if row["roles"]}
    if in_force:
        shown = ", ".join(
            f"{role} {version} {share:.1%}"
            for version, roles in in_force.items()
            for role, share in sorted(roles.items())
            if share > 0 or role != "shadow"
        )
        lines.append(f"in force on the server (router): {shown}")
    lines.append(f"per version, {f'over the last {window:.0f} s' if window else 'since the server started'}:")
    header = (
        f"{'version':>7} {'pinned':>7} {'sticky':>7} {'random':>7} {'shadow':>7} {'errors':>7} {'err %':>6} "
        f"{'triton ok':>9} {'fail':>5}  {'e2e p50/p95/p99 ms':>20}  {'ttft p50/p95/p99 ms':>20}"
    )
    lines.append(header)
    for row in rows:
        routed = row["routed"]
        rate = "-" if row["error_rate"] is None else f"{row['error_rate']:.1%}"
        lines.append(
            f"{row['version']:>7} {routed['pinned']:>7.0f} {routed['sticky']:>7.0f} {routed['random']:>7.0f} "
            f"{routed['shadow']:>7.0f} {row['failures']:>7.0f} {rate:>6} {row['triton_success']:>9.0f} "
            f"{row['triton_failure']:>5.0f}  {ms(row['e2e']):>20}  {ms(row['ttft']):>20}"
        )
    return "\n".join(lines)


# ---- the split: current, checked, written ---------------------------------------------------------


def default_file() -> Path:
    override = os.environ.get(CANARY_FILE_ENV, "").strip()
    return Path(override) if override else artifacts_dir() / "canary.json"


def router_defaults(http_url: str) -> RoutingConfig:
    """The split the router uses while no weights file exists: its config.pbtxt parameters."""
    try:
        response = requests.get(f"http://{http_url}/v2/models/{ROUTER}/config", timeout=10)
        response.raise_for_status()
        params = {k: v["string_value"] for k, v in response.json().get("parameters", {}).items()}
    except requests.RequestException:
        # Only when the server is unreachable: tritonclient.grpc loads grpc and the protobuf stubs.
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        config = text_format.Parse(
            (MODEL_REPOSITORY / ROUTER / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        params = {k: v.string_value for k, v in config.parameters.items()}
    return RoutingConfig.from_parameters(params)


def current_split(path: Path, http_url: str) -> tuple[RoutingConfig, str]:
    if path.exists():
        return read_config(path), str(path)
    return router_defaults(http_url), f"router defaults; {path} not written yet"


def check_ready(config: RoutingConfig, http_url: str, model: str = GENERATOR_MODEL) -> None:
    for version in config.versions():
        try:
            ready = (
                requests.get(f"http://{http_url}/v2/models/{model}/versions/{version}/ready", timeout=10).status_code
                == 200
            )
        except requests.RequestException as exc:
            raise SystemExit(
                f"cannot reach the server at {http_url} to check version {version}: {exc} (--no-check skips)"
            ) from exc
        if not ready:
            raise SystemExit(f"{model} version {version} is not ready on {http_url}; not writing (--no-check skips)")


# ---- rollout -----------------------------------------------------------------------------------------

EXIT = {PROMOTED: 0, ROLLED_BACK: 3}  # any other end (cancelled): 4


def add_rollout_parser(commands) -> None:
    rollout = commands.add_parser("rollout", help="guarded rollout: shadow -> 5%% -> ... -> promoted, or rolled back")
    rollout.add_argument("--canary-version", type=int, default=None, help="default: the split's canary version")
    rollout.add_argument("--steps", default="shadow,5,25,50,100", help="'shadow[:share]' and percentages, in order")
    rollout.add_argument("--window", type=float, default=300.0, help="seconds each step is held at least")
    rollout.add_argument("--min-requests", type=int, default=100, help="canary requests each step needs at least")
    rollout.add_argument("--interval", type=float, default=5.0, help="seconds between guard evaluations")
    defaults = Thresholds()
    for name in ("max_error_rate_increase", "max_latency_ratio", "latency_slack_s", "min_exact_match"):
        rollout.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    rollout.add_argument("--max-length-ratio", type=float, default=defaults.max_length_ratio)
    rollout.add_argument("--min-samples", type=int, default=defaults.min_samples, help="before a guard may judge")
    mode = rollout.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true", help="write the first step; the routers drive the rest")
    mode.add_argument("--resume", action="store_true", help="drive the rollout already running in the file")
    rollout.add_argument("--timeout", type=float, default=None, help="stop driving after this many seconds")


def plan_from(args) -> RolloutPlan:
    names = ("max_error_rate_increase", "max_latency_ratio", "latency_slack_s", "min_exact_match")
    limits = Thresholds(
        **{name: getattr(args, name) for name in names},
        max_length_ratio=args.max_length_ratio,
        min_samples=args.min_samples,
    )
    return RolloutPlan(parse_steps(args.steps), args.window, args.min_requests, args.interval, limits)


def run_rollout(args, path: Path, config: RoutingConfig) -> int:
    """Start (or resume) a rollout and, unless detached, drive it to its end, printing each decision."""
    holder = driver_id("cli")
    if args.resume:
        state = read_state(path)[1] if path.exists() else None
        if state is None or not state.running:
            print(f"error: no running rollout in {path}", file=sys.stderr)
            return 1
    else:
        canary = args.canary_version or config.canary_version
        if canary is None:
            print("error: no canary version: give --canary-version", file=sys.stderr)
            return 1
        if not args.no_check:
            check_ready(RoutingConfig(config.stable_version, canary), args.http_url)
        state = begin(path, config, canary, plan_from(args), None if args.detach else holder)
    print(state.describe())
    if args.detach:
        print(f"written to {path}; the routers drive it (`canary status` shows its progress)")
        return 0
    final = drive(path, holder, args.metrics_url or [DEFAULT_METRICS_URL], state.started_at, args.timeout)
    if final is None or final.running:
        print("stopped driving; the rollout stays at its step (resume with --resume)")
        return 1
    print(f"{final.status}: {final.describe()}")
    return EXIT.get(final.status, 4)


def drive(path: Path, holder: str, urls: list[str], start: float, timeout: float | None):
    """Drive the rollout in the foreground; print each decision with its guards, and the held steps now and then."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = {"hold": 0.0}

    def show(decision) -> None:
        if decision is None:
            return
        if decision.action != HOLD:
            print(render_decision(decision, start))
            print("\n".join(render_guards(decision.guards, indent="    ")))
            _, state = read_state(path)
            if state is not None and state.running:
                print(f"[{time.time() - start:7.1f}s] step {state.current.name}: {read_config(path).describe()}")
        elif time.monotonic() - shown["hold"] >= 10.0:
            shown["hold"] = time.monotonic()
            print(render_decision(decision, start))
        sys.stdout.flush()

    driver = RolloutDriver(path, lambda: scrape(urls), holder, log=lambda line: None)
    stop = (lambda: False) if deadline is None else (lambda: time.monotonic() > deadline)
    return driver.run(stop=stop, on_tick=show)


DEFAULT_METRICS_URL = "http://127.0.0.1:8002/metrics"


def show_status(args, path: Path, config: RoutingConfig, source: str) -> int:
    urls = args.metrics_url or [DEFAULT_METRICS_URL]
    before = scrape(urls)
    samples = before
    if args.interval:
        time.sleep(args.interval)
        samples = delta(scrape(urls), before)
    print(render_status(config, source, version_rows(samples), args.interval))
    state = read_state(path)[1] if path.exists() else None
    if state is not None:
        print(render_rollout(state))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonrag_clients.canary", description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=None, help="the router's weights file")
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="Triton HTTP address")
    parser.add_argument(
        "--metrics-url", action="append", help=f"/metrics of a replica (repeat for each; default {DEFAULT_METRICS_URL})"
    )
    parser.add_argument("--no-check", action="store_true", help="write without checking versions are ready")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="the split and per-version traffic, errors, latency")
    status.add_argument("--interval", type=float, default=None, help="report the growth over this many seconds")
    setter = commands.add_parser("set", help="change the split")
    setter.add_argument("--canary-weight", type=float, default=None)
    setter.add_argument("--canary-version", type=int, default=None)
    setter.add_argument("--stable-version", type=int, default=None)
    setter.add_argument("--shadow", type=float, default=None, help="share of stable traffic mirrored to the canary")
    shadow = commands.add_parser("shadow", help="mirror a share of stable traffic to the canary")
    shadow.add_argument("weight", type=float)
    commands.add_parser("promote", help="the canary becomes stable and takes all traffic")
    commands.add_parser("rollback", help="canary (and shadow) weight to 0")
    add_rollout_parser(commands)
    args = parser.parse_args(argv)

    path = args.file or default_file()
    try:
        config, source = current_split(path, args.http_url)
        if args.command == "status":
            return show_status(args, path, config, source)
        if args.command == "rollout":
            return run_rollout(args, path, config)
        if args.command == "set":
            new = set_split(
                config,
                canary_weight=args.canary_weight,
                canary_version=args.canary_version,
                stable_version=args.stable_version,
                shadow_weight=args.shadow,
            )
        elif args.command == "shadow":
            new = set_split(config, shadow_weight=args.weight)
        elif args.command == "promote":
            new = promote(config)
        else:
            new = rollback(config)
    except (ValueError, OSError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.no_check:
        check_ready(new, args.http_url)
    stop_by_hand(path, new, f"canary {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"was: {config.describe()}\nnow: {new.describe()}  (written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
