"""The soak's own tritonserver: the real model repository on free ports, with the `llm` router reading
a weights file of the soak's own (so the canary flip touches no other server) and driving rollouts
from this server's /metrics. Or, with --url, the address of one already running."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonrag.triton.canary import CANARY_FILE_ENV, RoutingConfig, write_config
from tritonrag.triton.rollout_driver import METRICS_URL_ENV
from tritonrag.triton.server import TritonServer
from tritonrag_bench.soak import chaos
from tritonrag_bench.soak.runner import Endpoints
from tritonrag_clients.canary import default_file

READY_TIMEOUT_S = 900.0  # eight models, two generator engines warming up on two busy cores


@dataclass
class SoakServer(TritonServer):
    """TritonServer with a few more environment variables for its models."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.extra_env}


def start_own(out: Path) -> tuple[SoakServer, Endpoints]:
    """Start a server whose router reads `out/canary.json` (stable 1, canary 2 at 0%); wait until ready."""
    weights = out / "canary.json"
    write_config(weights, RoutingConfig(stable_version=1, canary_version=2))
    server = SoakServer.on_free_ports(log_path=out / "server.log")
    server.extra_env = {CANARY_FILE_ENV: str(weights), METRICS_URL_ENV: server.metrics_url}
    server.start()
    try:
        server.wait_ready(READY_TIMEOUT_S)
    except Exception:
        server.stop()
        raise
    process = server.process
    assert process is not None
    endpoints = Endpoints(
        server.grpc_url,
        server.http_url,
        server.metrics_url,
        weights,
        process.pid,
        alive=lambda: process.poll() is None,
        log_tail=lambda: server.log_tail(80),
    )
    return server, endpoints


def attach(grpc: str, http: str, metrics: str, weights_file: Path | None) -> Endpoints:
    """A running server; its process is found by its gRPC port when it runs on this machine (for the kill)."""
    host, _, port = grpc.rpartition(":")
    local = host in ("127.0.0.1", "localhost", "0.0.0.0") and port.isdigit()
    pid = chaos.server_pid(int(port)) if local else None
    return Endpoints(grpc, http, metrics, weights_file or default_file(), pid)
