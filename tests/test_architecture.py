"""The package layout holds: layers import downward only, no import cycles, own imports at the top, a small core.

Read from the source with `ast` (nothing is imported), so a violation names the file and line.
See ARCHITECTURE.md for the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tritonrag": ROOT / "src", "tritonrag_clients": ROOT / "clients", "tritonrag_bench": ROOT / "bench"}

# Each layer and the layers it may import (itself included). Order is bottom-up.
LAYERS = {
    "vocabulary": {"vocabulary"},  # errors, defaults, paths, sampling, metrics
    "compile": {"vocabulary", "compile"},  # ONNX export helpers, TensorRT builds, runtime choice
    "engine": {"vocabulary", "compile", "engine"},  # the engine core: scheduler, KV cache, serving
    "runners": {"vocabulary", "compile", "engine", "runners"},  # torch / ONNX Runtime / TensorRT step runners
    "retrieval": {"vocabulary", "compile", "retrieval"},  # corpus, index, embedder, reranker, prompt
    "factory": {"vocabulary", "compile", "engine", "runners"},  # engine.factory: assembles core + runner
    "triton": {"vocabulary", "compile", "engine", "runners", "retrieval", "factory", "triton"},
    "clients": {"vocabulary", "triton", "clients"},
    "openai": {"vocabulary", "retrieval", "triton", "openai"},  # the OpenAI API service and web page
    "bench": {"vocabulary", "compile", "engine", "runners", "factory", "triton", "clients", "bench"},
}
VOCABULARY = {"errors", "defaults", "paths", "sampling", "metrics", "__init__"}
ENGINE_CORE_LIMIT = 2000  # lines, the bound for the core (nano-vllm's scope is ~1,600)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "tritonrag_clients":
        return "clients"
    if parts[0] == "tritonrag_bench":
        return "bench"
    if len(parts) == 1 or parts[1] in VOCABULARY:
        return "vocabulary"
    if parts[1] == "engine":
        if len(parts) > 2 and parts[2] == "runners":
            return "runners"
        return "factory" if len(parts) > 2 and parts[2] == "factory" else "engine"
    return parts[1]


def modules() -> dict[str, Path]:
    found = {}
    for package, base in PACKAGES.items():
        for path in sorted((base / package).rglob("*.py")):
            name = ".".join(path.relative_to(base).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def own_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import of our packages in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                out.append((name, node.lineno, id(node) in top))
    return out


MODULES = modules()


def resolve(name: str) -> str | None:
    """The module an import names (`from a.b import c` may name module a.b.c or attribute c of a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    return {m: {t for n, _, _ in own_imports(p) if (t := resolve(n)) and t != m} for m, p in MODULES.items()}


def test_layers_import_downward_only():
    wrong = []
    for module, path in MODULES.items():
        for name, line, _ in own_imports(path):
            target = resolve(name)
            if target and layer_of(target) not in LAYERS[layer_of(module)]:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line} ({layer_of(module)}) imports {target} ({layer_of(target)})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(
                    " -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}"
                )
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_own_modules_are_imported_at_the_top():
    late = [
        f"{p.relative_to(ROOT)}:{line} imports {name} inside a function"
        for p in MODULES.values()
        for name, line, top in own_imports(p)
        if not top
    ]
    assert not late, "\n".join(late)


def test_engine_core_stays_small():
    core = [p for m, p in MODULES.items() if layer_of(m) == "engine"]
    lines = sum(len(p.read_text().splitlines()) for p in core)
    assert lines < ENGINE_CORE_LIMIT, f"the engine core has {lines} lines; the bound is {ENGINE_CORE_LIMIT}"


def test_the_checker_sees_a_cycle_and_a_wrong_layer():
    """The rules above can fail: a made-up upward import is caught by both checks."""
    assert layer_of("tritonrag.engine.scheduler") == "engine"
    assert layer_of("tritonrag.engine.runners.llama") == "runners"
    assert "runners" not in LAYERS[layer_of("tritonrag.engine.scheduler")]
    assert "triton" not in LAYERS[layer_of("tritonrag.retrieval.index")]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_package_is_found(package):
    assert any(m.split(".")[0] == package for m in MODULES), f"no module of {package} under {PACKAGES[package]}"
