"""TensorRT engine builds: an ONNX graph in, a serialized engine out, cached by what it was built from.

Two backends build engines. Full TensorRT (`tensorrt`) needs a GPU and targets the GPU
it runs on. TensorRT for RTX (`tensorrt_rtx_bindings`, from PyPI) builds ahead of time on
a CPU-only machine for a chosen compute capability; its networks are strongly typed, so
the engine's precision is the ONNX graph's own. One flow serves both:

    ONNX ─▶ graph facts (sha256, precision, inputs with their dimension names)
         ─▶ profile: each named dynamic dimension ─▶ DimRange(min, opt, max) from settings
         ─▶ cache key = sha256(onnx sha256, precision, profile, backend + version, compute capability)
         ─▶ engines/<name>/<key>/engine.json present? a cache hit, nothing is built
            else parse, configure, build (progress shown), write model.engine + engine.json

Engines cannot be deserialized without a GPU, so engine.json records what the build
knew: the network's inputs and outputs, the profile, the size and the build time.
Full TensorRT loads and saves a timing cache (engines/timing_cache/<backend>-<version>-<sm>.cache);
TensorRT-RTX has none (its timing-cache calls are no-ops since RTX 1.2: it tunes at run time).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import logging
import math
import operator
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tritonrag.defaults import DTYPES
from tritonrag.paths import engines_dir

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "tensorrt_rtx")
_MODULES = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt_rtx_bindings"}
PRECISIONS = DTYPES  # the engine's dtype names: one vocabulary for precision
DEFAULT_RTX_CAPABILITY = "sm89"  # Ada: the newest datacenter-class target TensorRT-RTX 1.7 has (no sm90)
ENGINE_FILE = "model.engine"
META_FILE = "engine.json"
KEY_CHARS = 16  # folder name: a prefix of the key; engine.json keeps all of it


class BuildError(RuntimeError):
    """The engine cannot be built as asked; the message says why and what to do."""


# ---- backend -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """An importable TensorRT flavour: its name, version and bindings module."""

    name: str  # "tensorrt" or "tensorrt_rtx"
    version: str
    trt: Any

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"


def load_backend(requested: str = "auto") -> Backend:
    """`auto`: full TensorRT if it imports, else TensorRT for RTX; neither is an error that says what to install."""
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be auto, {' or '.join(BACKENDS)}, got {requested!r}")
    errors = []
    for name in BACKENDS if requested == "auto" else (requested,):
        try:
            module = importlib.import_module(_MODULES[name])
        except (ImportError, OSError) as exc:  # OSError: the bindings import but a shared library is missing
            errors.append(f"{name}: {exc}")
            continue
        return Backend(name, module.__version__, module)
    raise BuildError(
        "no TensorRT backend can be imported (" + "; ".join(errors) + "). Install TensorRT for RTX "
        "(pip install 'tritonrag[trt-rtx]', builds without a GPU) or tensorrt on a GPU host."
    )


def current_gpu_capability() -> str | None:
    """The compute capability of torch's current CUDA device as `sm<major><minor>`, or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}"


def rtx_capabilities(backend: Backend) -> list[str]:
    """The targets TensorRT for RTX can build for ahead of time (CURRENT needs a GPU, NONE is no target)."""
    members = backend.trt.ComputeCapability.__members__
    return [name.lower() for name in members if name not in ("NONE", "CURRENT")]


def target_capability(backend: Backend, requested: str | None) -> str:
    """The compute capability the engine is built for: the chosen one (RTX) or this GPU's (full TensorRT)."""
    requested = requested.strip().lower() if requested else None
    if backend.is_rtx:
        capability = requested or DEFAULT_RTX_CAPABILITY
        if capability not in rtx_capabilities(backend):
            hint = " (TensorRT-RTX has no Hopper target)" if capability == "sm90" else ""
            raise BuildError(
                f"TensorRT-RTX {backend.version} cannot target {capability}{hint}; "
                f"choose one of {', '.join(rtx_capabilities(backend))}"
            )
        return capability
    current = current_gpu_capability()
    if current is None:
        raise BuildError(
            "full TensorRT builds for the GPU it runs on and torch sees no CUDA GPU; "
            "build ahead of time with TensorRT for RTX (--backend tensorrt_rtx)"
        )
    if requested and requested != current:
        raise BuildError(
            f"full TensorRT builds for this GPU ({current}), not {requested}; "
            "use --backend tensorrt_rtx to build for another compute capability"
        )
    return current


# ---- the ONNX graph ----------------------------------------------------------------------


@dataclass(frozen=True)
class GraphInput:
    """A graph input: each axis is its fixed size, or the name of its dynamic dimension ('' if unnamed)."""

    name: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphFacts:
    """What the cache key and the profile need from an ONNX graph, read without building anything."""

    path: Path
    sha256: str  # over the graph file and its external-data files
    precision: str  # fp32 / fp16 / bf16: the float type most weight elements have
    inputs: tuple[GraphInput, ...]


def read_graph(path: Path) -> GraphFacts:
    """Hash the graph (with its external data), find its precision and its inputs' dimension names."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BuildError(f"no ONNX graph at {path} (export it first: make onnx)")
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_graph_input(value) for value in model.graph.input if value.name not in initializers)
    files = [path] + sorted({path.parent / loc for loc in _external_locations(model)})
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise BuildError(
            f"{path} keeps weights in external data files that are missing: {', '.join(missing)} "
            "(they belong beside the graph; export it again: make onnx)"
        )
    return GraphFacts(path, _sha256_files(files), _graph_precision(model), inputs)


def _graph_input(value) -> GraphInput:
    dims = value.type.tensor_type.shape.dim
    return GraphInput(value.name, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims))


def _external_locations(model) -> set[str]:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    return {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}


def _sha256_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(2**24):
                digest.update(chunk)
    return digest.hexdigest()


def _graph_precision(model) -> str:
    """The float type holding most weight elements (the graph inputs' float type if it has no float weights)."""
    from onnx import TensorProto

    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
    counts: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.data_type in names:
            counts[names[init.data_type]] = counts.get(names[init.data_type], 0) + math.prod(init.dims)
    if not counts:
        for value in [*model.graph.input, *model.graph.output]:
            kind = names.get(value.type.tensor_type.elem_type)
            if kind:
                counts[kind] = counts.get(kind, 0) + 1
    return max(counts, key=counts.get) if counts else "float32"


# ---- optimization profile ----------------------------------------------------------------


@dataclass(frozen=True)
class DimRange:
    """The sizes one dynamic dimension takes: TensorRT tunes for `opt` and accepts [min, max]."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise ValueError(f"a dimension range needs 0 <= min <= opt <= max, got {self}")

    @classmethod
    def fixed(cls, size: int) -> DimRange:
        return cls(size, size, size)

    def union(self, other: DimRange) -> DimRange:
        """The smallest range covering both (opt: the larger, where the bigger settings run)."""
        return DimRange(min(self.min, other.min), max(self.opt, other.opt), max(self.max, other.max))


@dataclass(frozen=True)
class InputProfile:
    """min / opt / max shapes of one input in an optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


class UnknownDimension(BuildError):
    """A dynamic dimension of the graph has no range in the model's settings."""


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def resolve_dim(name: str, dims: Mapping[str, DimRange]) -> DimRange:
    """The range of a dimension: by its name, or an expression of known names (`P + Q`, as torch.export writes them)."""
    if name in dims:
        return dims[name]
    try:
        tree = ast.parse(name, mode="eval").body
    except SyntaxError:
        raise UnknownDimension(name) from None
    ranges = [_evaluate(tree, dims, part) for part in ("min", "opt", "max")]
    return DimRange(*ranges)


def _evaluate(node: ast.AST, dims: Mapping[str, DimRange], part: str) -> int:
    if isinstance(node, ast.Name) and node.id in dims:
        return getattr(dims[node.id], part)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, dims, part), _evaluate(node.right, dims, part))
    raise UnknownDimension(ast.unparse(node))


def derive_profile(
    model: str, inputs: tuple[GraphInput, ...], dims: Mapping[str, DimRange]
) -> tuple[InputProfile, ...]:
    """One profile for every input: fixed axes as they are, dynamic ones from `dims` by name.

    A dynamic axis without a name, or with a name `dims` does not know, is an error: a
    guessed range would build an engine that rejects real requests or wastes memory.
    """
    profile = []
    for graph_input in inputs:
        ranges = [_axis_range(model, graph_input, axis, dim, dims) for axis, dim in enumerate(graph_input.shape)]
        profile.append(
            InputProfile(graph_input.name, *(tuple(getattr(r, part) for r in ranges) for part in ("min", "opt", "max")))
        )
    return tuple(profile)


def _axis_range(
    model: str, graph_input: GraphInput, axis: int, dim: int | str, dims: Mapping[str, DimRange]
) -> DimRange:
    if isinstance(dim, int) and dim > 0:
        return DimRange.fixed(dim)
    where = f"{model}: input {graph_input.name!r} axis {axis}"
    if not dim:
        raise UnknownDimension(f"{where} is dynamic without a name; export it with a named dynamic axis")
    try:
        return resolve_dim(dim, dims)
    except UnknownDimension as exc:
        raise UnknownDimension(
            f"{where} is the dynamic dimension {dim!r} (unknown: {exc}), which the engine builder has no range for; "
            f"known dimensions: {', '.join(sorted(dims))}. Add it to the {model} settings in tritonrag.compile.trt_build"
        ) from None


# ---- precision -----------------------------------------------------------------------------


def choose_precision(requested: str | None, graph_precision: str, backend: Backend) -> str:
    """The engine's precision: the graph's own by default; a different one only where the backend can make it.

    TensorRT-RTX builds strongly typed networks: every tensor keeps the ONNX graph's type,
    so asking it for another precision is refused (export the graph in that precision).
    Full TensorRT can lower a float32 graph to float16 / bfloat16 with builder flags.
    """
    if requested is not None and requested not in PRECISIONS:
        raise BuildError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested in (None, graph_precision):
        return graph_precision
    if backend.is_rtx:
        raise BuildError(
            f"TensorRT-RTX builds strongly typed networks: the engine's precision is the ONNX graph's own "
            f"({graph_precision}), so {requested} cannot be built from this graph. Export the graph in "
            f"{requested}, or leave the precision unset to build {graph_precision}."
        )
    if graph_precision != "float32":
        raise BuildError(
            f"full TensorRT lowers only float32 graphs with builder flags; this graph is "
            f"{graph_precision}, asked {requested}: export the graph in {requested}"
        )
    return requested


# ---- cache key ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildKey:
    """Everything an engine depends on; equal keys mean the cached engine is the one a build would make."""

    onnx_sha256: str
    precision: str
    profile: tuple[InputProfile, ...]
    backend: str
    backend_version: str
    compute_capability: str

    def as_dict(self) -> dict:
        """Plain JSON values (lists, not tuples): what engine.json records and the digest hashes."""
        return json.loads(json.dumps(asdict(self)))

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


# ---- build -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    """An engine in the cache and its engine.json; `cache_hit` says whether this call built it."""

    name: str
    engine_path: Path
    meta: dict
    cache_hit: bool

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def size_bytes(self) -> int:
        return self.meta["size_bytes"]

    @property
    def build_seconds(self) -> float:
        return self.meta["build_seconds"]


def build_engine(
    name: str,
    onnx_path: Path,
    dims: Mapping[str, DimRange],
    *,
    precision: str | None = None,
    compute_capability: str | None = None,
    backend: Backend | None = None,
    root: Path | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> BuildResult:
    """Build (or find in the cache) the engine of `name` from `onnx_path`, its profile from `dims`.

    The cache lives at <root>/<name>/<key>/ (root: engines_dir()); an unchanged model is
    never rebuilt unless `force`.
    """
    backend = backend or load_backend()
    with _progress(show_progress) as progress:
        task = progress.add_task(f"{name}: reading {Path(onnx_path).name}", total=None)
        graph = read_graph(Path(onnx_path))
        key = BuildKey(
            graph.sha256,
            choose_precision(precision, graph.precision, backend),
            derive_profile(name, graph.inputs, dims),
            backend.name,
            backend.version,
            target_capability(backend, compute_capability),
        )
        folder = Path(root or engines_dir()) / name / key.digest[:KEY_CHARS]
        cached = None if force else cached_engine(name, folder, key)
        if cached is not None:
            progress.update(task, description=f"{name}: cache hit {folder.name}", total=1, completed=1)
            log.info(
                "%s: cache hit %s (%s, built in %.1f s)", name, folder, _mib(cached.size_bytes), cached.build_seconds
            )
            return cached
        progress.update(task, description=f"{name}: parsing the ONNX graph")
        result = _build(name, graph, key, folder, backend, progress)
        progress.update(task, description=f"{name}: built in {result.build_seconds:.1f} s", total=1, completed=1)
    log.info("%s: built %s (%s) in %.1f s", name, result.engine_path, _mib(result.size_bytes), result.build_seconds)
    return result


def cached_engine(name: str, folder: Path, key: BuildKey) -> BuildResult | None:
    """The engine in `folder` if its engine.json records this key and the engine file is whole."""
    meta_path, engine_path = folder / META_FILE, folder / ENGINE_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if (
        meta.get("key") != key.digest
        or not engine_path.is_file()
        or engine_path.stat().st_size != meta.get("size_bytes")
    ):
        log.warning("%s: %s does not match its engine.json; rebuilding", name, folder)
        return None
    return BuildResult(name, engine_path, meta, cache_hit=True)


def _build(name: str, graph: GraphFacts, key: BuildKey, folder: Path, backend: Backend, progress) -> BuildResult:
    trt = backend.trt
    logger = _trt_logger(trt)
    started = time.perf_counter()
    builder = trt.Builder(logger)
    strongly_typed = backend.is_rtx or key.precision == graph.precision
    network, parser = _parse(builder, graph, backend, logger, strongly_typed)
    config = _configure(builder, key, backend, strongly_typed)
    timing_cache = _attach_timing_cache(config, folder.parent.parent, key, backend)
    config.progress_monitor = _progress_monitor(trt, progress, name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(
            f"{name}: TensorRT could not build the engine: " + ("; ".join(logger.errors) or "no error logged")
        )
    seconds = time.perf_counter() - started
    _save_timing_cache(config, timing_cache)
    meta = _describe(name, graph, key, network, serialized.nbytes, seconds, timing_cache, backend)
    _write_entry(folder, serialized, meta)
    del parser  # the parser owns weights the network refers to: it lives until the build is written
    return BuildResult(name, folder / ENGINE_FILE, meta, cache_hit=False)


def _parse(builder, graph: GraphFacts, backend: Backend, logger, strongly_typed: bool):
    """(network, parser) of the ONNX graph; every parser error is reported with its node.

    Strongly typed (every tensor keeps the graph's type) unless full TensorRT lowers an
    fp32 graph to fp16 / bf16; TensorRT-RTX networks are always strongly typed.
    """
    trt = backend.trt
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph.path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        details = "; ".join(f"{e.desc()} (node {e.node()} {e.node_name()!r}, op {e.node_operator()})" for e in errors)
        raise BuildError(f"{graph.path}: the ONNX parser of {backend.name} {backend.version} failed: {details}")
    return network, parser


def _configure(builder, key: BuildKey, backend: Backend, strongly_typed: bool):
    """Builder config: the profile, the precision flag (full TensorRT) or the compute capability (RTX)."""
    trt = backend.trt
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for entry in key.profile:
        profile.set_shape(entry.name, entry.min, entry.opt, entry.max)
    config.add_optimization_profile(profile)
    if backend.is_rtx:
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, key.compute_capability.upper()), 0)
    elif key.precision in ("float16", "bfloat16") and not strongly_typed:
        config.set_flag({"float16": trt.BuilderFlag.FP16, "bfloat16": trt.BuilderFlag.BF16}[key.precision])
    return config


def _timing_cache_path(root: Path, key: BuildKey) -> Path:
    return root / "timing_cache" / f"{key.backend}-{key.backend_version}-{key.compute_capability}.cache"


def _attach_timing_cache(config, root: Path, key: BuildKey, backend: Backend) -> Path | None:
    """Load the timing cache file into the config (full TensorRT); TensorRT-RTX has none (its calls are no-ops)."""
    if backend.is_rtx:
        return None
    path = _timing_cache_path(root, key)
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log.info("timing cache %s (%s)", path, "loaded" if path.is_file() else "new")
    return path


def _save_timing_cache(config, path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, bytes(config.get_timing_cache().serialize()))


def _describe(
    name: str,
    graph: GraphFacts,
    key: BuildKey,
    network,
    size: int,
    seconds: float,
    timing_cache: Path | None,
    backend: Backend,
) -> dict:
    """engine.json: the key and its inputs, the network's I/O, the profile, size and build time."""
    return {
        "name": name,
        "key": key.digest,
        "key_inputs": key.as_dict(),
        "onnx_path": str(graph.path),
        "engine_file": ENGINE_FILE,
        "size_bytes": size,
        "build_seconds": round(seconds, 3),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend": backend.name,
        "backend_version": backend.version,
        "compute_capability": key.compute_capability,
        "precision": key.precision,
        "inputs": [_tensor(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [_tensor(network.get_output(i)) for i in range(network.num_outputs)],
        "profiles": [{p.name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for p in key.profile}],
        "timing_cache": str(timing_cache) if timing_cache else "none: TensorRT-RTX has no timing cache",
    }


_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def dtype_name(dtype) -> str:
    """A TensorRT DataType as the numpy / torch name (float32, int64, bfloat16, ...)."""
    raw = str(dtype).rsplit(".", 1)[-1]
    return _DTYPES.get(raw, raw.lower())


def _tensor(tensor) -> dict:
    shape = list(tensor.shape)
    names = [tensor.get_dimension_name(axis) if size < 0 else None for axis, size in enumerate(shape)]
    return {"name": tensor.name, "shape": shape, "dtype": dtype_name(tensor.dtype), "dim_names": names}


def _write_entry(folder: Path, serialized, meta: dict) -> None:
    """Engine first, engine.json last: an entry with engine.json is whole (a reader never sees half)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    _atomic_write(folder / ENGINE_FILE, serialized)
    _atomic_write(folder / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())


def _atomic_write(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(memoryview(data))
    os.replace(tmp, path)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# ---- logging and progress ------------------------------------------------------------------


def _trt_logger(trt):
    """A TensorRT logger that forwards to `logging` and keeps the errors for the exception message."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def _progress_monitor(trt, progress, name: str):
    """TensorRT's build phases as rich progress bars: one per running phase, indented by nesting."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.tasks: dict[str, tuple[Any, int, int]] = {}  # phase -> (rich task, depth, steps)

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            depth = self.tasks[parent_phase][1] + 1 if parent_phase in self.tasks else 0
            label = f"{name}: {'  ' * depth}{phase_name}"
            self.tasks[phase_name] = (progress.add_task(label, total=num_steps), depth, num_steps)

        def step_complete(self, phase_name, step) -> bool:
            if phase_name in self.tasks:
                progress.update(self.tasks[phase_name][0], completed=step + 1)
            return True

        def phase_finish(self, phase_name) -> None:
            task, depth, steps = self.tasks.pop(phase_name, (None, 0, 0))
            if task is None:
                return
            if depth > 0:
                progress.remove_task(task)
            else:
                progress.update(task, completed=steps)

    return Monitor()
