"""Device and runtime choice shared by every stage.

Device: CUDA when asked for or present, the CPU otherwise. Runtime: torch, onnxruntime
or tensorrt, as configured, falling back with a stated reason when it cannot run here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tritonrag.compile.trt_build import BuildError, load_backend


def pick_device(requested: str = "auto") -> str:
    """`auto` -> cuda if torch sees a GPU, else cpu; `cuda` without a GPU is an error, not a silent fallback."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was configured but torch sees no CUDA GPU")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    return requested


# ---- runtime choice: torch, onnxruntime or tensorrt ------------------------------------
# Every stage that can run compiled (embedder, reranker, generator step) picks its runtime
# from a config.pbtxt parameter through `pick_runtime`; what cannot run here falls back,
# one step down the chain, with the reason logged by the caller: never silently.

RUNTIMES = ("torch", "onnxruntime", "tensorrt")
_FALLBACK = {"tensorrt": "onnxruntime", "onnxruntime": "torch"}


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime a stage will use, the one configured, and why they differ."""

    name: str
    requested: str
    reasons: tuple[str, ...] = ()  # one per runtime skipped, in order

    @property
    def fell_back(self) -> bool:
        return self.name != self.requested

    def describe(self) -> str:
        if not self.fell_back:
            return f"runtime {self.name}"
        return f"runtime {self.name} (configured {self.requested}: " + "; ".join(self.reasons) + ")"


def runtime_unavailable(runtime: str, device: str, artifact: Path | None) -> str | None:
    """Why `runtime` cannot run on `device` with `artifact` (its ONNX graph or engine), or None."""
    if runtime == "torch":
        return None
    if runtime == "tensorrt":  # what the machine lacks first: on a CPU host, the engine file is moot
        if device != "cuda":
            return "a TensorRT engine needs a CUDA GPU"
        try:
            load_backend()  # full TensorRT or TensorRT for RTX, as the engines were built with
        except BuildError as exc:
            return f"the tensorrt runtime is not installed ({exc})"
    if runtime == "onnxruntime":
        try:
            import onnxruntime
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc})"
        if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if runtime in ("onnxruntime", "tensorrt"):
        if artifact is None or not Path(artifact).is_file():
            return f"{runtime} needs {artifact or 'an artifact'}, which does not exist (build it: make onnx / make engines)"
        return None
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def pick_runtime(requested: str, device: str, artifacts: Mapping[str, Path | None]) -> RuntimeChoice:
    """The configured runtime if it can run, else the first one down tensorrt -> onnxruntime -> torch that can.

    `artifacts` maps a runtime to the file it loads (onnxruntime: the .onnx, tensorrt: the
    engine); torch needs none. An unknown runtime name is an error, not a fallback.
    """
    requested = requested.strip().lower() or "torch"
    if requested not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {requested!r}")
    runtime, reasons = requested, []
    while (reason := runtime_unavailable(runtime, device, artifacts.get(runtime))) is not None:
        reasons.append(reason)
        runtime = _FALLBACK[runtime]
    return RuntimeChoice(runtime, requested, tuple(reasons))
