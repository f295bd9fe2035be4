"""The soak's command line: start (or attach to) a server, run, judge, write result.json and result.md."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import tritonrag_bench.soak as package
from tritonrag.paths import REPO_ROOT, artifacts_dir
from tritonrag_bench.soak import checks, report, server
from tritonrag_bench.soak.runner import Endpoints, Settings, Soak


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tritonrag_bench.soak", description=package.__doc__.splitlines()[0])
    defaults = Settings()
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="traffic time (default 2)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="workers, one call each")
    parser.add_argument("--burst", type=int, default=defaults.burst, help="streams per burst (router max_streams 64)")
    parser.add_argument("--burst-every", type=float, default=defaults.burst_every_s, help="seconds between bursts")
    parser.add_argument(
        "--timeout", type=float, default=defaults.timeout_s, help="the Triton timeout each call carries, s (0: none)"
    )
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s, help="seconds before a call is HUNG")
    parser.add_argument("--drain", type=float, default=defaults.drain_s, help="seconds the engine may take to drain")
    parser.add_argument("--no-canary", action="store_true", help="no canary weight flip")
    parser.add_argument("--no-kill", action="store_true", help="no generator stub kill")
    parser.add_argument("--kill-version", type=int, default=defaults.kill_version)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--url", default=None, help="attach to this gRPC address instead of starting a server")
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="with --url: the server's HTTP address")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics", help="with --url: its /metrics")
    parser.add_argument("--canary-file", type=Path, default=None, help="with --url: the router's weights file")
    parser.add_argument("--out", type=Path, default=artifacts_dir() / "soak")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        minutes=args.minutes,
        concurrency=args.concurrency,
        deadline_s=args.deadline,
        timeout_s=args.timeout,
        burst=args.burst,
        burst_every_s=args.burst_every,
        canary=not args.no_canary,
        kill=not args.no_kill,
        kill_version=args.kill_version,
        drain_s=args.drain,
        seed=args.seed,
    )


def git_state() -> dict:
    """The commit, and whether the router or the server glue had uncommitted changes (work in progress)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "model_repository", "src/tritonrag", "backends").split("\n")
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "?", "dirty": [d[3:] for d in dirty if d]}


def run(settings: Settings, endpoints: Endpoints, out: Path, meta: dict) -> dict:
    """Run the soak against `endpoints`, judge it, write result.json and result.md; the result."""
    meta = {**meta, **git_state()}  # the code the server started with
    soak = Soak(settings, endpoints)
    soak.note("soak started", f"{settings.minutes:g} min, {settings.concurrency} workers, bursts of {settings.burst}")
    soak.run()
    verdict, measured = checks.verdict(soak)
    meta = {**meta, "minutes": settings.minutes, "concurrency": settings.concurrency}
    meta |= {
        "burst": settings.burst,
        "deadline_s": settings.deadline_s,
        "kill": settings.kill,
        "canary": settings.canary,
    }
    meta |= {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - soak.now()))}
    meta |= {"cpus": os.cpu_count(), "load": [round(x, 1) for x in os.getloadavg()]}
    result = report.summary(soak, verdict, measured, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "result.md").write_text(report.markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    args.out.mkdir(parents=True, exist_ok=True)
    own = None
    if args.url:
        endpoints = server.attach(args.url, args.http_url, args.metrics_url, args.canary_file)
        meta = {"server": f"attached to {args.url}"}
    else:
        print(f"starting tritonserver (log: {args.out / 'server.log'}) ...", flush=True)
        try:
            own, endpoints = server.start_own(args.out)
        except (RuntimeError, TimeoutError) as exc:
            print(f"tritonserver did not start: {exc}", file=sys.stderr)
            return 2
        meta = {"server": "own tritonserver 2.51"}
    try:
        result = run(settings, endpoints, args.out, meta)
    finally:
        if own is not None:
            own.stop()
    print(report.markdown(result))
    print(f"written: {args.out / 'result.json'}, {args.out / 'result.md'}")
    if result["server_log_tail"]:
        return 2
    return 0 if result["passed"] else 1
