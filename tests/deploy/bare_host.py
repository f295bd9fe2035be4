"""A stand-in for the bare GPU host's Python: a virtualenv that holds only the distributions that host has.

Why: `build/gpu_check.py --bare` runs on a machine with no network and no `make setup`, where a module
that imports faiss, tritonclient or pytriton at the top would stop the run before any check. This builds,
in seconds, a virtualenv without pip or site packages whose site-packages links to those of our virtualenv's
distributions that bare_host_packages.txt lists (the GPU host's package list), each with its dist-info, so
an import of anything else fails here as it would there. Versions are ours, not the host's (torch 2.13 CPU
here, 2.11 CUDA there): the stand-in checks imports and code paths, not numerics. So that our versions of
those packages import at all, what they require goes in too (our huggingface_hub needs httpx2, say; the
host's has its own), and the caller gets those names to check that none is a package the host lacks on purpose.
"""

from __future__ import annotations

import re
import venv
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PACKAGES = Path(__file__).with_name("bare_host_packages.txt")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def host_packages() -> set[str]:
    lines = (line.strip() for line in PACKAGES.read_text().splitlines())
    return {normalize(line) for line in lines if line and not line.startswith("#")}


def with_requirements(names: set[str], installed: dict[str, metadata.Distribution]) -> set[str]:
    """`names` and every distribution they require (no extras), as installed here."""
    closure, todo = set(names), list(names)
    while todo:
        for line in installed[todo.pop()].requires or []:
            requirement = Requirement(line)
            name = normalize(requirement.name)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            if name in installed and name not in closure:
                closure.add(name)
                todo.append(name)
    return closure


def bare_python(root: Path) -> tuple[Path, list[str], list[str]]:
    """(the stand-in's python, the host's distributions linked into it, the requirements added beside them)."""
    venv.EnvBuilder(with_pip=False, system_site_packages=False, symlinks=True).create(root)
    site = next((root / "lib").glob("python3*/site-packages"))
    installed = {normalize(d.metadata["Name"] or ""): d for d in metadata.distributions()}
    listed = host_packages() & set(installed)
    linked = with_requirements(listed, installed)
    for name in linked:
        dist = installed[name]
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source, target = Path(str(dist.locate_file(top))), site / top
            if source.exists() and not target.exists():
                target.symlink_to(source)
    return root / "bin" / "python", sorted(listed), sorted(linked - listed)
