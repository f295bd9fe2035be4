"""The soak's chaos actions: a canary split change through the canary CLI, finding and killing a
generator version's Python stub, and a burst of streams beyond the router's `max_streams`.

The stub is found in /proc (tritonrag.triton.stubs): a `triton_python_backend_stub` child of our
tritonserver whose first argument is `<repository>/generator/<version>/model.py`. Only a child of the server the soak talks
to is ever killed (found by its gRPC port when the soak attaches with --url).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from pathlib import Path

from tritonrag.defaults import GENERATOR_MODEL
from tritonrag.triton.stubs import cmdline, stub_pids
from tritonrag_clients import canary


def server_pid(grpc_port: int) -> int | None:
    """The tritonserver process serving gRPC on this port on this machine, if there is one."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        args = cmdline(pid)
        if args and args[0].endswith("tritonserver") and f"--grpc-port={grpc_port}" in args:
            return int(pid)
    return None


def stub_pid(server: int, version: int, model: str = GENERATOR_MODEL) -> int | None:
    """The Python stub running `model` version `version` under tritonserver `server`."""
    return next(iter(stub_pids(server, model, version)), None)


def kill_stub(server: int, version: int) -> str:
    """SIGKILL the generator version's stub; what was done, in words."""
    pid = stub_pid(server, version)
    if pid is None:
        return f"no stub for {GENERATOR_MODEL} version {version} under tritonserver {server}: nothing killed"
    os.kill(pid, signal.SIGKILL)
    return f"SIGKILL to {GENERATOR_MODEL} version {version}'s stub (pid {pid}, tritonserver {server})"


def canary_cli(weights_file: Path, http_url: str, *command: str) -> tuple[int, str]:
    """`python -m tritonrag_clients.canary --file F --http-url U <command>`, in this process: (exit status, output)."""
    out = io.StringIO()
    argv = ["--file", str(weights_file), "--http-url", http_url, *command]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = canary.main(argv)
        except SystemExit as exc:  # check_ready refuses with SystemExit(message)
            print(exc)
            status = 1
    return status, " ".join(out.getvalue().split())
