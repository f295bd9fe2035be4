"""ONNX graphs of our models: export with dynamic axes, check, describe in meta.json, run under ONNX Runtime.

Each graph has its own folder, `onnx_dir()/<name>/` (`embedder`, `reranker`, ...), holding
`model.onnx` and a `meta.json` written at export:

    format, name, graph, sha256, bytes, opset, exporter, exported_at, export_seconds,
    inputs / outputs: [{name, shape (ints and axis names), dtype}],
    source: {checkpoint, sha256, files},       what the graph was exported from
    parity: {reference, max_abs_diff, tolerance, ...}   measured against torch at export
    (+ whatever an exporter adds, e.g. the tokenizer's max_length)

Generic helpers, for any exporter (the generator step's in tritonrag.engine.runners.onnx_runner too):

    staging(out_dir)                  write into a hidden sibling, swapped in on success
    export_module(module, example, path, output_names, dynamic_axes)  torch -> model.onnx
    graph_files(path)                 model.onnx (+ model.onnx.data when weights are external)
    check(path)                       onnx.checker (full) + the graph's inputs/outputs
    source_fingerprint(checkpoint)    sha256 of a checkpoint's weights and json configs
    write_meta(path, name, source=..., parity=..., extra=...) / read_meta(folder)
    up_to_date(folder, checkpoint)    meta.json matches the graph on disk and the checkpoint
    max_abs_diff(got, want, mask)     the parity number, optionally over unmasked positions
    OnnxRuntime(path, device)         a runtime with one `run(feeds, outputs)` method
    choose_runtime(...)               tritonrag.compile.runtime.pick_runtime plus the checks a graph
                                      needs before it serves (fresh meta.json), fallback logged

The exporters themselves live with their models: tritonrag.retrieval.export (embedder,
cross-encoder) and tritonrag.engine.runners.step_export (the generator step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tritonrag.compile.runtime import RUNTIMES, RuntimeChoice, pick_runtime

FORMAT = 1  # bump when the exporters change what a graph computes
OPSET = 18  # the opset TensorRT for RTX 1.7 was checked with (shared PLATFORM.md)
GRAPH_FILE = "model.onnx"
META_FILE = "meta.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")

log = logging.getLogger(__name__)


# ---- export and check -------------------------------------------------------------------


def export_module(
    module,
    example: Mapping[str, object],
    path: Path,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = OPSET,
    external_data: bool = False,
) -> Path:
    """Export `module(**example)` with torch.onnx's dynamo exporter; inputs named as example's keys.

    dynamic_axes names the dynamic dimension of each input ({"input_ids": {0: "batch", 1: "seq"}});
    an axis name shared by several inputs is one dimension. Give every dynamic axis an example
    size of at least 2, or the exporter specialises it. Outputs are renamed to output_names
    (values inside the graph that already carry one of those names are renamed first).
    Weights are stored inside the file unless external_data (needed past 2 GB): then beside
    it in `<path>.data`, which graph_files() and the sha256 in meta.json include.
    """
    import torch

    dims: dict[str, object] = {}
    shapes = {
        name: {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()}
        for name, axes in dynamic_axes.items()
    }
    with warnings.catch_warnings():
        # Noise of torch 2.13's exporter: each shared axis name "will not be used" (it is), LeafSpec deprecation.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            module, (), kwargs=dict(example), dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False
        )
    _rename_outputs(program.model.graph, output_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=external_data)
    return path


def graph_files(path: Path) -> list[Path]:
    """The graph file and its external weights file when it has one (what meta.json's sha256 covers)."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def _rename_outputs(graph, names: Sequence[str]) -> None:
    """Name the graph's outputs; the exporter names values after torch ops, so 'embedding' can be taken."""
    if len(graph.outputs) != len(names):
        raise ValueError(f"the graph has {len(graph.outputs)} outputs, {len(names)} names were given")
    outputs = set(map(id, graph.outputs))
    for node in graph.all_nodes():
        for value in node.outputs:
            if value.name in names and id(value) not in outputs:
                value.name = f"{value.name}__internal"
    for value, name in zip(graph.outputs, names):
        value.name = name


def check(path: Path) -> dict[str, list[dict]]:
    """onnx.checker.check_model (full check, with shape inference) on the file; returns its inputs/outputs."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    return graph_io(path)


def graph_io(path: Path) -> dict[str, list[dict]]:
    """{"inputs": [...], "outputs": [...]}, each {name, shape, dtype}; a dynamic axis is its name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {"inputs": [_tensor_spec(v) for v in graph.input], "outputs": [_tensor_spec(v) for v in graph.output]}


def _tensor_spec(value) -> dict:
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}


def max_abs_diff(got: np.ndarray, want: np.ndarray, mask: np.ndarray | None = None) -> float:
    """max |got - want|, over the positions where mask is 1 when a [B, L] mask is given."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    if mask is not None:
        diff = diff * np.asarray(mask).reshape(mask.shape + (1,) * (diff.ndim - mask.ndim))
    return float(diff.max()) if diff.size else 0.0


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A fresh hidden sibling of out_dir to write into, swapped in when the block succeeds.

    A server never reads a half-written graph, and a failed export (parity) leaves the old one.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        yield building
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    building.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ---- meta.json ----------------------------------------------------------------------------


def file_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def source_fingerprint(checkpoint: Path) -> dict:
    """What a graph was exported from: the checkpoint's weight files and json configs, hashed together.

    Contents and paths inside the checkpoint count, not where it lies (a reinstalled package
    or a moved folder stays fresh). A file checkpoint (a .gguf) is hashed alone. Tokenizer
    configs are json too, so a changed max_length also makes the graph stale.
    """
    checkpoint = Path(checkpoint).resolve()
    if checkpoint.is_file():
        files = [checkpoint]
    else:
        files = sorted(p for p in _walk(checkpoint) if _defines_model(p, checkpoint))
    if not files:
        raise FileNotFoundError(f"{checkpoint} holds no weights or configs to export")
    digest = hashlib.sha256()
    names = [p.name if p == checkpoint else str(p.relative_to(checkpoint)) for p in files]
    for name, path in zip(names, files):
        digest.update(name.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return {"checkpoint": str(checkpoint), "sha256": digest.hexdigest(), "files": names}


def _walk(root: Path) -> Iterator[Path]:
    """Every file under root, through symlinked folders too (a checkpoint assembled from links)."""
    for folder, _, names in os.walk(root, followlinks=True):
        yield from (Path(folder) / name for name in names)


def _defines_model(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and (path.suffix in WEIGHT_SUFFIXES or path.suffix == ".json")


def write_meta(
    path: Path,
    name: str,
    *,
    source: dict,
    parity: dict,
    extra: Mapping | None = None,
    export_seconds: float | None = None,
) -> dict:
    """Write meta.json beside the graph at path (after `check`), and return it."""
    import torch

    meta = {
        "format": FORMAT,
        "name": name,
        "graph": path.name,
        "sha256": file_sha256(*graph_files(path)),
        "bytes": sum(p.stat().st_size for p in graph_files(path)),
        "opset": _opset(path),
        "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=True)",
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_seconds": None if export_seconds is None else round(export_seconds, 1),
        **graph_io(path),
        "source": source,
        "parity": parity,
        **dict(extra or {}),
    }
    (path.parent / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def read_meta(folder: Path) -> dict | None:
    """The folder's meta.json, or None when there is none."""
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def stale_reason(folder: Path, checkpoint: Path, check_graph: bool = True) -> str | None:
    """Why the graph in folder does not stand for checkpoint (None when it does).

    check_graph also re-hashes model.onnx against meta.json (the build's up-to-date check);
    serving skips that and checks only the source.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    graph = folder / (meta or {}).get("graph", GRAPH_FILE)
    if meta is None:
        return f"{folder / META_FILE} is missing (re-export: python build/export_onnx.py)"
    if meta.get("format") != FORMAT:
        return f"{graph} has export format {meta.get('format')}, this code writes {FORMAT} (re-export)"
    if not graph.is_file():
        return f"{graph} is missing"
    if check_graph and file_sha256(*graph_files(graph)) != meta["sha256"]:
        return f"{graph} changed since its meta.json was written (re-export)"
    if meta["source"]["sha256"] != source_fingerprint(checkpoint)["sha256"]:
        exported_from, checkpoint = meta["source"]["checkpoint"], Path(checkpoint).resolve()
        if exported_from == str(checkpoint):
            return f"{checkpoint} changed since {graph} was exported from it (re-export)"
        return (
            f"{graph} was exported from {exported_from}, whose weights or configs differ "
            f"from {checkpoint} (re-export with --checkpoint)"
        )
    return None


def up_to_date(folder: Path, checkpoint: Path) -> bool:
    """True when folder's graph was exported by this code from checkpoint and is unchanged since."""
    return stale_reason(folder, checkpoint) is None


# ---- running a graph ----------------------------------------------------------------------


class OnnxRuntime:
    """An ONNX Runtime session over one graph: `run(feeds, outputs)` -> {output name: array}.

    CUDAExecutionProvider on a CUDA device (pick_runtime checked it exists), else the CPU.
    Spinning worker threads are off: a stage shares the CPU with the generator, and an idle
    spinning pool steals its cycles.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.path} needs inputs {missing}")
        values = self.session.run(list(outputs), {n: np.ascontiguousarray(feeds[n]) for n in self.input_names})
        return dict(zip(outputs, values))


def choose_runtime(
    requested: str,
    device: str,
    onnx_path: Path | None,
    checkpoint: Path,
    engine_path: Path | None = None,
    logger: logging.Logger | None = None,
) -> RuntimeChoice:
    """pick_runtime, then one step down while the picked runtime cannot serve this stage.

    onnxruntime cannot when the graph's meta.json is missing or names other weights than
    checkpoint (a graph of another model would answer, silently wrong); tensorrt cannot
    without an engine for this GPU (engine_path None). A fallback is logged at WARNING with its reasons,
    on the stage's logger ("tritonrag.retrieval.embedder: runtime torch (configured onnxruntime: ...)").
    """
    artifacts = {"onnxruntime": onnx_path, "tensorrt": engine_path}
    choice = pick_runtime(requested, device, artifacts)
    while (reason := _cannot_serve(choice.name, onnx_path, checkpoint, engine_path)) is not None:
        lower = pick_runtime(RUNTIMES[RUNTIMES.index(choice.name) - 1], device, artifacts)
        choice = RuntimeChoice(lower.name, choice.requested, choice.reasons + (reason,) + lower.reasons)
    if choice.fell_back:
        logger = logger or log
        logger.warning("%s: %s", logger.name, choice.describe())
    return choice


def _cannot_serve(runtime: str, onnx_path: Path | None, checkpoint: Path, engine_path: Path | None) -> str | None:
    if runtime == "tensorrt" and engine_path is None:
        return "no TensorRT engine for this stage (make engines)"
    if runtime == "onnxruntime":
        return stale_reason(Path(onnx_path).parent, checkpoint, check_graph=False)
    return None
