"""The standard library's API documentation, rendered from the running interpreter with `inspect`.

One record per public API entry: a module (its docstring plus the names it offers), a class
(its docstring, signature and methods), a function, a method or a property, each with its
docstring. Record ids are qualified names (`functools.lru_cache`, `pathlib.Path.read_text`,
`os.path.join`), so an entry is found under the name a user imports it by.

Which modules: every public top-level module of `sys.stdlib_module_names` and the public
submodules of packages, minus EXCLUDED (deprecated by PEP 594 or removed by 3.13, GUI and
test packages, modules with import side effects, platform modules absent here). An object
re-exported by several modules is documented once, under the first of them in sorted order
(the package before its submodules: `asyncio.run`, not `asyncio.runners.run`).

Importing ~500 modules has side effects (warnings, signal handlers, registered codecs), so
`corpus.default_corpus()` runs this module in a subprocess and reads its JSON lines:

    python -m tritonrag.retrieval.stdlib_docs [--modules NAME,...] > entries.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from types import ModuleType

# Deprecated by PEP 594 / removed by 3.12-3.13, GUI, tests, IDLE, 2to3, Windows-only, side effects.
EXCLUDED = frozenset(
    "aifc antigravity asynchat asyncore audioop cgi cgitb chunk crypt distutils idlelib imghdr imp lib2to3 "
    "mailcap msilib msvcrt nis nntplib nt ntpath ossaudiodev pipes smtpd sndhdr spwd sunau telnetlib this "
    "tkinter turtle turtledemo uu winreg winsound xdrlib sre_compile sre_constants sre_parse test pydoc_data "
    "genericpath nturl2path posixpath posix encodings.aliases".split()
)
# Packages whose submodules are implementation detail or generated (codecs, tests).
NO_SUBMODULES = frozenset({"encodings", "test", "unittest.test", "ctypes.test", "lib2to3", "idlelib"})
# Modules documented under the name users import them by.
ALIASES = {"os.path": "posixpath"}
MAX_SIGNATURE = 100
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+(?=[>;])")
_DATA = (int, float, complex, str, bytes, bool, tuple, list, dict, set, frozenset, type(None))


@dataclass(frozen=True)
class Entry:
    """One API entry: id = qualified name, title = kind + name + signature, text = its docs."""

    id: str
    title: str
    text: str
    kind: str


def public_modules() -> list[str]:
    """Sorted names of the public stdlib modules and their public submodules (importable here)."""
    names = set(ALIASES)
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in EXCLUDED:
            continue
        module = _import(top)
        if module is None:
            continue
        names.add(top)
        names.update(_submodules(module))
    return sorted(names)


def _submodules(package: ModuleType) -> Iterator[str]:
    if package.__name__ in NO_SUBMODULES or not hasattr(package, "__path__"):
        return
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        leaf = info.name.rsplit(".", 1)[1]
        if leaf.startswith("_") or leaf in ("test", "tests") or info.name in EXCLUDED:
            continue
        module = _import(info.name)
        if module is not None:
            yield info.name
            yield from _submodules(module)


def _import(name: str) -> ModuleType | None:
    """The module, or None when it cannot be imported here (platform, missing C library)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(ALIASES.get(name, name))
        except Exception:  # noqa: BLE001 - any import failure means "not documented here"
            return None


def render(names: list[str]) -> Iterator[Entry]:
    """Entries of the given modules in order, each object documented once, under canonical_module()."""
    modules = [(n, m) for n, m in ((n, _import(n)) for n in names) if m is not None]
    exporters: dict[int, list[str]] = {}
    for name, module in modules:
        for _, obj in public_members(name, module):
            exporters.setdefault(id(obj), []).append(name)
    for name, module in modules:
        members = [
            (n, obj) for n, obj in public_members(name, module) if canonical_module(obj, exporters[id(obj)]) == name
        ]
        yield from module_entries(name, module, members)


def canonical_module(obj: object, exporters: list[str]) -> str:
    """Where an object exported by several modules is documented: the shortest exporter that is its home
    module or a package above it (asyncio.run, not asyncio.runners.run; threading.Lock, not
    multiprocessing.dummy.Lock), else the exporter with the fewest dots."""
    home = _public_name(str(getattr(obj, "__module__", "") or ""))
    above = [e for e in exporters if home == e or home.startswith(e + ".")]
    return min(above or exporters, key=lambda e: (e.count("."), len(e), e))


def _public_name(module: str) -> str:
    """`_functools` -> functools, `posixpath` -> os.path: the module users import a C accelerator's names from."""
    reverse = {real: alias for alias, real in ALIASES.items()}
    return reverse.get(module, ".".join(part.lstrip("_") for part in module.split(".")))


def module_entries(name: str, module: ModuleType, members: list[tuple[str, object]]) -> Iterator[Entry]:
    """The module's own entry, then one per member documented here."""
    doc = _doc(module)
    listing = _listing(members)
    if doc or listing:
        summary = doc.split("\n", 1)[0] if doc else ""
        yield Entry(name, f"module {name}" + (f": {summary}" if summary else ""), _join(doc, listing), "module")
    for member_name, obj in members:
        yield from object_entries(f"{name}.{member_name}", obj)


def public_members(name: str, module: ModuleType) -> list[tuple[str, object]]:
    """(name, object) of the module's API: __all__ when it has one, else public names defined in it."""
    explicit = getattr(module, "__all__", None)
    if explicit is not None:
        candidates = [n for n in explicit if isinstance(n, str) and hasattr(module, n)]
    else:
        homes = {module.__name__, name, "_" + name.rsplit(".", 1)[-1]}
        candidates = [n for n, obj in vars(module).items() if getattr(obj, "__module__", None) in homes]
    members = []
    for member in sorted(set(candidates)):
        obj = getattr(module, member)
        if not member.startswith("_") and _documentable(obj):
            members.append((member, obj))
    return members


def _documentable(obj: object) -> bool:
    if isinstance(obj, ModuleType) or isinstance(obj, _DATA):
        return False
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return True
    own = getattr(obj, "__doc__", None)  # documented instances: typing.Optional, functools.partial objects
    return bool(own) and own is not getattr(type(obj), "__doc__", None)


def object_entries(qualified: str, obj: object) -> Iterator[Entry]:
    """A class (then its own methods and properties), a function or a documented object.

    A public class or function without a docstring (asyncio.TaskGroup in 3.11) still gets an
    entry: its qualified name and signature are what a user searches for.
    """
    if inspect.isclass(obj):
        methods = list(class_members(obj))
        listing = "Methods: " + ", ".join(n for n, _ in methods) if methods else ""
        kind = "exception" if issubclass(obj, BaseException) else "class"
        title = f"{kind} {qualified}{signature(obj)}"
        yield Entry(qualified, title, _join(_doc(obj), listing) or title, kind)
        for method_name, member in methods:
            yield from _member_entry(f"{qualified}.{method_name}", member)
        return
    kind = "function" if inspect.isroutine(obj) else "object"
    title = f"{kind} {qualified}{signature(obj)}"
    yield Entry(qualified, title, _doc(obj) or title, kind)


def class_members(cls: type) -> Iterator[tuple[str, object]]:
    """Public methods and properties of the class itself and of its private bases (`_ActionsContainer`
    gives ArgumentParser its add_argument); public bases document their own."""
    found: dict[str, object] = {}
    for klass in cls.__mro__:
        if klass is not cls and (klass is object or not klass.__name__.startswith("_")):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") or name in found:
                continue
            if isinstance(raw, (staticmethod, classmethod)):
                found[name] = raw.__func__
            elif isinstance(raw, property) or inspect.isroutine(raw) or inspect.isdatadescriptor(raw):
                found[name] = raw
    return iter(sorted(found.items()))


def _member_entry(qualified: str, member: object) -> Iterator[Entry]:
    doc = _doc(member)
    if not doc:
        return
    if inspect.isroutine(member):
        yield Entry(qualified, f"method {qualified}{signature(member)}", doc, "method")
    else:
        yield Entry(qualified, f"attribute {qualified}", doc, "attribute")


def signature(obj: object) -> str:
    """`(args)` as inspect sees it, '' when it cannot; long ones are cut to MAX_SIGNATURE characters."""
    try:
        text = str(inspect.signature(obj))
    except Exception:  # noqa: BLE001 - C signatures may name objects that do not exist (curses)
        return ""
    text = _ADDRESS.sub("", text)  # `<object object at 0x7f...>` defaults differ on every run
    return text if len(text) <= MAX_SIGNATURE else text[: MAX_SIGNATURE - 4] + " ...)"


def _doc(obj: object) -> str:
    try:
        doc = inspect.getdoc(obj)
    except Exception:  # noqa: BLE001 - a broken __doc__ property means no docs
        return ""
    return _ADDRESS.sub("", doc.strip()) if isinstance(doc, str) else ""


def _listing(members: list[tuple[str, object]]) -> str:
    classes = [n for n, obj in members if inspect.isclass(obj)]
    functions = [n for n, obj in members if not inspect.isclass(obj)]
    parts = [
        f"Classes: {', '.join(classes)}" if classes else "",
        f"Functions: {', '.join(functions)}" if functions else "",
    ]
    return "\n".join(p for p in parts if p)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default="", help="comma-separated module names (default: every public module)")
    args = parser.parse_args(argv)
    names = [n for n in args.modules.split(",") if n] or public_modules()
    out = sys.stdout
    sys.stdout = io.StringIO()  # modules that print on import must not corrupt the JSON lines
    try:
        for entry in render(names):
            out.write(json.dumps(asdict(entry)) + "\n")
    finally:
        sys.stdout = out


if __name__ == "__main__":
    main()
