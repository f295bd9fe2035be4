"""Finding a model version's Python stub among a server's children in /proc (tritonrag.triton.stubs).

Real processes stand in for stubs: bash, started through a link named `triton_python_backend_stub`,
runs a script at `<repository>/<model>/<version>/model.py`, so /proc shows the arguments a Triton
stub has. This test process stands in for tritonserver (their parent).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from polling import wait_for
from tritonrag.triton.stubs import STUB_BINARY, StubWatch, stub_pids

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")


@pytest.fixture()
def fake_stub(tmp_path):
    """Start a fake stub of (model, version); every one still running is killed at the end."""
    link = tmp_path / STUB_BINARY
    link.symlink_to(shutil.which("bash"))
    started: list[subprocess.Popen] = []

    def start(model: str, version: int) -> subprocess.Popen:
        script = tmp_path / "model_repository" / model / str(version) / "model.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("sleep 120\ntrue\n")  # a second command: bash stays the process, not sleep
        process = subprocess.Popen([str(link), str(script)])
        started.append(process)
        assert wait_for(lambda: process.pid in stub_pids(os.getpid(), model)), "the fake stub never showed up"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_stubs_are_found_by_model_version_and_parent(fake_stub):
    one = fake_stub("generator", 1)
    two = fake_stub("generator", 2)
    other = fake_stub("embedder", 1)
    assert stub_pids(os.getpid(), "generator") == {one.pid: 1, two.pid: 2}
    assert stub_pids(os.getpid(), "generator", 2) == {two.pid: 2}
    assert stub_pids(os.getpid(), "embedder") == {other.pid: 1}
    assert stub_pids(os.getppid(), "generator") == {}, "another server's children are not ours"


def test_a_killed_stub_is_dead_even_before_it_is_reaped(fake_stub):
    watch = StubWatch("generator", server_pid=os.getpid(), max_age_s=0.0)
    one = fake_stub("generator", 1)
    two = fake_stub("generator", 2)
    assert watch.dead_versions() == set() and not watch.dead(2)
    two.kill()
    # Not waited for yet: a zombie (state Z) in /proc, as a stub tritonserver has not reaped.
    assert wait_for(lambda: watch.dead(2))
    assert watch.dead_versions() == {2} and not watch.dead(1)
    two.wait()
    assert watch.dead(2), "gone from /proc altogether"
    assert one.poll() is None


def test_a_version_never_seen_running_is_not_called_dead(fake_stub):
    # A router whose loopback points at another server sees no sibling stubs: nothing is dead.
    watch = StubWatch("generator", server_pid=os.getpid(), max_age_s=0.0)
    assert not watch.dead(1) and watch.dead_versions() == set()
    fake_stub("generator", 1)
    assert not watch.dead(1) and not watch.dead(3)


def test_a_replaced_stub_is_running_again(fake_stub):
    watch = StubWatch("generator", server_pid=os.getpid(), max_age_s=0.0)
    first = fake_stub("generator", 1)
    assert not watch.dead(1)
    first.kill()
    first.wait()
    assert watch.dead(1)
    fake_stub("generator", 1)  # a reload starts a new stub for the version
    assert not watch.dead(1)
