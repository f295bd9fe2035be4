"""Device choice shared by every stage: CUDA when asked for or present, the CPU otherwise."""

from __future__ import annotations


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
