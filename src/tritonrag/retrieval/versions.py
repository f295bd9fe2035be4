"""Versioned index folders behind an atomically replaced pointer, so a live index can change under a server.

An index home (artifacts/index) holds immutable version folders and a pointer file:

    CURRENT            one line: the name of the version being served (replaced with os.replace)
    v000007/           faiss.index, docstore.sqlite, meta.json, bm25/
    v000008/

A writer builds a new version in a hidden staging folder, renames it to the next version name
and then replaces CURRENT: a reader sees either the old version or the new one, complete, never
a mix. Readers (the retriever) poll CURRENT and load the new version beside the old one, then
swap one reference; searches already running finish on the version they started with. The
newest KEEP versions stay on disk so that a reader still on an older one keeps its files.
Writers take an exclusive lock on the home, so two `index add` commands do not race.

A folder without CURRENT is a plain index folder (the layout before versions) and is served as is.
For readers that know only that layout (paths such as `artifacts/index/docstore.sqlite`), the
home also holds LINKS: symbolic links to the current version's files, replaced atomically too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

POINTER = "CURRENT"
LOCK_FILE = ".writer.lock"
KEEP = 3
LINKS = ("faiss.index", "docstore.sqlite", "meta.json")
_VERSION = re.compile(r"^v(\d{6,})$")


def pointer(home: str | Path) -> str | None:
    """The version name CURRENT holds, or None for a plain folder (or one not built yet)."""
    path = Path(home) / POINTER
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def current(home: str | Path) -> Path:
    """The folder to serve: home/<CURRENT> when there is a pointer, else home itself."""
    name = pointer(home)
    return Path(home) / name if name else Path(home)


def versions(home: str | Path) -> list[str]:
    """Version folder names in home, oldest first."""
    home = Path(home)
    if not home.is_dir():
        return []
    return sorted((p.name for p in home.iterdir() if p.is_dir() and _VERSION.match(p.name)), key=_number)


def _number(name: str) -> int:
    return int(_VERSION.match(name).group(1))


@contextlib.contextmanager
def writer_lock(home: str | Path) -> Iterator[None]:
    """Exclusive lock for the one writer of an index home (blocks until the previous writer is done)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def staging(home: str | Path) -> Path:
    """A new hidden folder in home to build the next version in (leftovers of dead writers removed)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    for stale in home.glob(".staging-*"):
        if not _alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    folder = home / f".staging-{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir()
    return folder


def _alive(stale: Path) -> bool:
    """Whether another living process owns this staging folder (called under the writer lock)."""
    try:
        pid = int(stale.name.split("-")[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return pid != os.getpid()


def publish(home: str | Path, built: Path) -> Path:
    """Make the built folder the served version: rename it to the next version, then replace CURRENT."""
    home = Path(home)
    existing = versions(home)
    name = f"v{(_number(existing[-1]) + 1) if existing else 1:06d}"
    target = home / name
    built.rename(target)
    _fsync_dir(target)
    tmp = home / f".{POINTER}.{os.getpid()}"
    tmp.write_text(name + "\n")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, home / POINTER)
    _link_files(home, name)
    _fsync_dir(home)
    prune(home)
    return target


def _link_files(home: Path, name: str) -> None:
    """home/<file> -> <name>/<file> for each of LINKS, each swapped in with os.replace."""
    for file in LINKS:
        tmp = home / f".{file}.link.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(name) / file)
        os.replace(tmp, home / file)


def prune(home: str | Path, keep: int = KEEP) -> None:
    """Remove all but the newest `keep` versions (never the current one)."""
    home = Path(home)
    served = pointer(home)
    for name in versions(home)[:-keep]:
        if name != served:
            shutil.rmtree(home / name, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
