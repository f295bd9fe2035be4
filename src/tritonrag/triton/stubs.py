"""Which versions of a model still have a running Python stub under this tritonserver.

Every Python model instance runs in its own `triton_python_backend_stub` process, a child of
tritonserver whose first argument is `<repository>/<model>/<version>/model.py`. When a
decoupled model's stub dies (the OOM killer, a crash, a SIGKILL), Triton 2.51 does not restart
it (python_be.cc restarts stubs of non-decoupled models only): the version stays READY, refuses
each new request with "Stub process ... is not healthy" and never answers the requests it
held. The `llm` router is a sibling stub of the same server, so it can see this in /proc and
act on it: route around the version, and end the streams it was waiting on at once instead of
at their bound.

A version counts as dead only after a stub of it was seen running: a router pointed at another
server (its stubs are not siblings) or a host without /proc sees nothing and never calls a
version dead.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"
PROC = Path("/proc")


def cmdline(pid: int | str) -> list[str]:
    """A process's arguments ([] when it is gone or unreadable)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def parent_and_state(pid: int | str) -> tuple[int, str] | None:
    """A process's parent pid and state letter (Z: exited, not yet reaped), or None when it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def stub_pids(server_pid: int, model: str, version: int | None = None) -> dict[int, int]:
    """Running (not zombie) stubs of `model` (of one version, or every one) under tritonserver
    `server_pid`: pid -> version."""
    found: dict[int, int] = {}
    try:
        pids = [name for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        args = cmdline(pid)
        if len(args) < 2 or not args[0].endswith(STUB_BINARY):
            continue
        stub_version = _version_of(args[1], model)
        if stub_version is None or (version is not None and stub_version != version):
            continue
        info = parent_and_state(pid)
        if info is not None and info[0] == server_pid and info[1] != "Z":
            found[int(pid)] = stub_version
    return found


def _version_of(model_file: str, model: str) -> int | None:
    """The version in `<repository>/<model>/<version>/model.py`, or None when the path is another model's."""
    parts = Path(model_file).parts
    if len(parts) < 3 or parts[-1] != "model.py" or parts[-3] != model or not parts[-2].isdigit():
        return None
    return int(parts[-2])


@dataclass
class StubWatch:
    """Versions of `model` whose stub ran under this server and no longer does. A scan of /proc
    (a few milliseconds) happens at most every `max_age_s`, whoever asks."""

    model: str
    server_pid: int = field(default_factory=os.getppid)  # the stub asking is tritonserver's child too
    max_age_s: float = 1.0
    seen: set[int] = field(default_factory=set)  # versions a running stub was found for, ever
    running: set[int] = field(default_factory=set)  # versions with a running stub at the last scan
    scanned_at: float = float("-inf")
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def dead(self, version: int) -> bool:
        """True once `version`'s stub was seen running and is gone now."""
        self._refresh()
        return version in self.seen and version not in self.running

    def dead_versions(self) -> set[int]:
        self._refresh()
        return self.seen - self.running

    def _refresh(self) -> None:
        with self.lock:
            if time.monotonic() - self.scanned_at < self.max_age_s:
                return
            self.running = set(stub_pids(self.server_pid, self.model).values())
            self.seen |= self.running
            self.scanned_at = time.monotonic()
