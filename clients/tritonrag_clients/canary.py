"""Show and change the generator's canary split: per-version traffic, errors and latency, set/promote/rollback.

    python -m tritonrag_clients.canary status [--interval 10]
    python -m tritonrag_clients.canary set --canary-weight 0.1 [--canary-version 2] [--stable-version 1] [--shadow 0.2]
    python -m tritonrag_clients.canary shadow 0.2
    python -m tritonrag_clients.canary promote
    python -m tritonrag_clients.canary rollback

Changes are written to the router's weights file (`--file`, default
`$TRITONRAG_ARTIFACTS/canary.json`, the path in the `llm` model's config.pbtxt), which the
router re-reads on change: no restart, no reload, in-flight streams untouched. Before
writing, every version the new split names is checked to be ready on the server
(`--no-check` skips it). `status` reads Triton's /metrics: the router's counters and the
split in force, Triton's per-version counters and the engine's latency histograms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import requests

from tritonrag import metrics
from tritonrag.defaults import GENERATOR_MODEL, LLM_MODEL
from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir
from tritonrag.triton.canary import RoutingConfig, promote, read_config, rollback, set_split, write_config
from tritonrag_clients.prom import Samples, parse_metrics, quantile, total

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
    return artifacts_dir() / "canary.json"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonrag_clients.canary", description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=None, help="the router's weights file")
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="Triton HTTP address")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics")
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
    args = parser.parse_args(argv)

    path = args.file or default_file()
    try:
        config, source = current_split(path, args.http_url)
        if args.command == "status":
            before = parse_metrics(requests.get(args.metrics_url, timeout=10).text)
            samples = before
            if args.interval:
                time.sleep(args.interval)
                samples = delta(parse_metrics(requests.get(args.metrics_url, timeout=10).text), before)
            print(render_status(config, source, version_rows(samples), args.interval))
            return 0
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
    write_config(path, new)
    print(f"was: {config.describe()}\nnow: {new.describe()}  (written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
