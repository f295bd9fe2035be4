"""The tensorrt runtime: load a cached engine on a CUDA GPU and run it with torch tensors.

`TrtSession.run(output_names, feeds)` reads like onnxruntime's `InferenceSession.run`
(names in, tensors out), so the embedder and the generator step runner can swap one for
the other. Inputs and outputs stay torch CUDA tensors: each input's shape is set on the
execution context, every tensor's address is bound, and `execute_async_v3` is enqueued on
torch's current stream, so the caller orders work with the usual torch stream semantics.

Engines come from the cache `tritonrag.compile.trt_build` writes (engines/<name>/<key>/):
`find_engine` picks the newest one built by this TensorRT for this GPU's compute
capability. GPU-only: nothing here runs without CUDA.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonrag.compile.trt_build import (
    ENGINE_FILE,
    META_FILE,
    Backend,
    current_gpu_capability,
    dtype_name,
    load_backend,
)
from tritonrag.paths import engines_dir

log = logging.getLogger(__name__)


class EngineNotFound(FileNotFoundError):
    """No engine in the cache fits this backend and GPU; the message says how to build one."""


def find_engine(
    name: str, root: Path | None = None, backend: Backend | None = None, capability: str | None = None
) -> Path:
    """The newest cached engine of `name` built by this backend and version for `capability` (this GPU's).

    Other entries (another TensorRT, another GPU generation) cannot be deserialized here,
    so they are passed over, and the error lists what the cache does hold.
    """
    backend = backend or load_backend()
    capability = capability or current_gpu_capability()
    if capability is None:
        raise RuntimeError("finding a TensorRT engine for this GPU needs a CUDA GPU, and torch sees none")
    folder = Path(root or engines_dir()) / name
    matches, others = [], []
    for meta_path in sorted(folder.glob(f"*/{META_FILE}")):
        meta = _read_meta(meta_path)
        wanted = (backend.name, backend.version, capability)
        found = (meta.get("backend"), meta.get("backend_version"), meta.get("compute_capability"))
        if found == wanted and (meta_path.parent / ENGINE_FILE).is_file():
            matches.append((meta.get("built_at", ""), meta_path.parent / ENGINE_FILE))
        else:
            others.append(" ".join(map(str, found)))
    if not matches:
        raise EngineNotFound(
            f"no {name} engine in {folder} built by {backend.name} {backend.version} for {capability} "
            f"(the cache holds: {', '.join(others) or 'nothing'}); build one: make engines"
        )
    return max(matches)[1]


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("skipping unreadable %s: %s", path, exc)
        return {}


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor: name, dtype (torch name) and shape (-1 for dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


class TrtSession:
    """One deserialized engine and its execution context on a CUDA device.

    Not thread-safe: one context holds one set of shapes and addresses; give each Triton
    model instance its own session.

    `inputs` / `outputs` are TensorSpecs, `profile` maps each input to the (min, max) shapes
    optimization profile 0 accepts, `engine_meta` is the engine's engine.json ({} if none).
    """

    def __init__(self, engine_path: Path | str, backend: Backend | None = None, device: str = "cuda") -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("a TensorRT engine needs a CUDA GPU and torch sees none")
        self.engine_path = Path(engine_path)
        self.device = torch.device(device)
        self.backend = backend or load_backend()
        trt = self.backend.trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise RuntimeError(
                    f"{self.backend.name} {self.backend.version} could not deserialize {self.engine_path}: "
                    f"built by another TensorRT or for another GPU? (see its {META_FILE})"
                )
            self.context = self.engine.create_execution_context()
        self.inputs, self.outputs = self._io_specs()
        self.profile = {spec.name: self._profile_range(spec.name) for spec in self.inputs}
        self.engine_meta = engine_meta(self.engine_path)
        log.info(
            "tensorrt: loaded %s (%s %s, %d inputs, %d outputs)",
            self.engine_path,
            self.backend.name,
            self.backend.version,
            len(self.inputs),
            len(self.outputs),
        )

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def _io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        trt, engine = self.backend.trt, self.engine
        inputs, outputs = [], []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            spec = TensorSpec(name, dtype_name(engine.get_tensor_dtype(name)), tuple(engine.get_tensor_shape(name)))
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        return inputs, outputs

    def _profile_range(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(min, max) shapes profile 0 accepts for input `name`."""
        low, _opt, high = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(low), tuple(high)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list:
        """Run the engine once: `feeds` maps every input name to a torch tensor or numpy array.

        Returns the named outputs (all of them for None) as torch tensors on the device,
        enqueued on torch's current stream: synchronize, or use them on that stream.
        A feed outside the profile, of another dtype, missing or unknown is a ValueError /
        TypeError raised before anything is enqueued.
        """
        outputs = self._execute(self.check_feeds(feeds))
        return [outputs[name] for name in (output_names or self.output_names)]

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict:
        """The feeds as contiguous device tensors, each checked against the engine's inputs and profile.

        The host-side half of `run`: it needs no GPU (on a CPU device it moves nothing), so
        its checks are tested without one.
        """
        tensors = {spec.name: self._input(spec, feeds) for spec in self.inputs}
        extra = set(feeds) - set(tensors)
        if extra:
            raise ValueError(
                f"{self.engine_path.parent.name}: unknown input(s) {sorted(extra)}; the engine takes {self.input_names}"
            )
        for name, tensor in tensors.items():
            self._check_shape(name, tuple(tensor.shape))
        return tensors

    def _execute(self, tensors: Mapping[str, Any]) -> dict:
        """Bind shapes and addresses of checked inputs and fresh outputs; enqueue on torch's current stream."""
        import torch

        for name, tensor in tensors.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"TensorRT refused shape {list(tensor.shape)} for input {name!r} (see its log)")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {spec.name: self._output(spec) for spec in self.outputs}
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.engine_path} (see the TensorRT log above)")
        return outputs

    def _input(self, spec: TensorSpec, feeds: Mapping[str, Any]):
        """The feed as a contiguous tensor on the device, of exactly the engine's dtype (no silent cast)."""
        import torch

        if spec.name not in feeds:
            raise ValueError(f"missing input {spec.name!r}; the engine takes {self.input_names}")
        value = feeds[spec.name]
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
        if tensor.dtype != getattr(torch, spec.dtype):
            raise TypeError(f"input {spec.name!r} must be {spec.dtype}, got {tensor.dtype}")
        return tensor.to(self.device, non_blocking=True).contiguous()

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """A shape outside the profile is the caller's error, stated here, not a TensorRT log line."""
        low, high = self.profile[name]
        if len(shape) != len(low) or any(not lo <= size <= hi for size, lo, hi in zip(shape, low, high)):
            raise ValueError(
                f"input {name!r} has shape {list(shape)}; the engine's profile accepts {list(low)} to "
                f"{list(high)} (rebuild with larger settings: make engines)"
            )

    def _output(self, spec: TensorSpec):
        import torch

        shape = tuple(self.context.get_tensor_shape(spec.name))
        if any(size < 0 for size in shape):
            raise RuntimeError(
                f"output {spec.name!r} has a data-dependent shape {list(shape)}, which this runtime does not support"
            )
        return torch.empty(shape, dtype=getattr(torch, spec.dtype), device=self.device)


def engine_meta(engine_path: Path | str) -> dict:
    """The engine.json `tritonrag.compile.trt_build` wrote beside the engine ({} if there is none).

    It records what the engine cannot tell once deserialized: the ONNX graph it was built
    from (and that graph's sha256), so a caller can trace the engine back to its weights.
    """
    path = Path(engine_path).parent / META_FILE
    return _read_meta(path) if path.is_file() else {}


def load_session(name: str, root: Path | None = None, backend: Backend | None = None) -> TrtSession:
    """A session over the newest cached engine of `name` for this GPU (EngineNotFound if none)."""
    backend = backend or load_backend()
    return TrtSession(find_engine(name, root, backend), backend)


def engine_or_none(name: str) -> Path | None:
    """The cached engine of `name` for this GPU, or None with the reason logged (the stage falls back)."""
    try:
        return find_engine(name)
    except Exception as exc:  # noqa: BLE001 - no GPU, no TensorRT, no engine: all mean "fall back"
        log.warning("no TensorRT engine for %s: %s", name, exc)
        return None


class TensorRTRuntime:
    """A stage runtime over a TrtSession: `run(feeds, outputs)` -> {output name: numpy array}.

    The same interface as tritonrag.compile.onnx_export.OnnxRuntime and the embedder's TorchRuntime,
    so a stage swaps runtimes without knowing which one it has. GPU only.
    """

    name = "tensorrt"

    def __init__(self, engine_path: Path, device: str = "cuda") -> None:
        self.session = TrtSession(engine_path, device=device)

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        import torch

        values = self.session.run(list(outputs), feeds)
        torch.cuda.current_stream(self.session.device).synchronize()
        return {name: value.cpu().numpy() for name, value in zip(outputs, values)}
