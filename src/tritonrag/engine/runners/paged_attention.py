"""Decode attention read in place from the paged KV cache: a small C++ op (csrc/), built once.

Why: the torch decode path gathers every sequence's keys and values out of the pool into
a padded copy and runs SDPA over the copy, so each key crosses memory three times. At
concurrency 32 on a 2-core CPU decode is bound by memory bandwidth, and that gather was
the largest single cost of a step (41% in a profile of the c=32 benchmark). The op reads
each key and value once, through the block tables.

It is compiled with torch's extension builder for this machine's CPU (`-march=native`),
into artifacts/torch_extensions/<CPU fingerprint>/, by `make setup` or on first use. Where
it cannot be built or loaded (no compiler, another platform), or TRITONRAG_PAGED_DECODE=0,
the model keeps the torch path and the reason is logged once.

    python -m tritonrag.engine.runners.paged_attention     # build (or find) it and check it against torch
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from tritonrag.paths import artifacts_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "paged_decode_attention.cpp"
EXTENSION_NAME = "tritonrag_paged_decode"
HEAD_DIMS = (64, 128)  # the head dims the op is compiled for
DecodeKernel = Callable[..., torch.Tensor]


def cpu_fingerprint() -> str:
    """Machine, CPU flags and torch version: a build for one CPU must not load on another."""
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    key = f"{platform.machine()}|{flags}|{torch.__version__}"
    return f"{platform.machine()}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def build_directory() -> Path:
    return artifacts_dir() / "torch_extensions" / cpu_fingerprint()


def disabled_reason() -> str | None:
    """Why the op is not used on this machine before trying to build it, or None."""
    if os.environ.get("TRITONRAG_PAGED_DECODE", "1") == "0":
        return "TRITONRAG_PAGED_DECODE=0"
    if platform.system() != "Linux":
        return f"built for Linux only, this is {platform.system()}"
    return None


@functools.cache
def load_decode_kernel() -> DecodeKernel | None:
    """`paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)`, or None (logged)."""
    reason = disabled_reason()
    if reason is None:
        try:
            kernel: DecodeKernel = _build().paged_decode_attention
            return kernel
        except Exception as exc:  # a missing compiler or a failed build must not stop the engine
            reason = f"could not build {SOURCE.name}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
    log.warning("paged decode attention op unavailable (%s): decode gathers keys and values with torch", reason)
    return None


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    # torch finds ninja on PATH; the pip `ninja` package puts it beside this interpreter,
    # which a `.venv/bin/python ...` call does not put on PATH
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    module: ModuleType = load(
        EXTENSION_NAME,
        [str(SOURCE)],
        build_directory=str(directory),
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )
    return module


def kernel_supports(head_dim: int, device: torch.device | str) -> bool:
    return torch.device(device).type == "cpu" and head_dim in HEAD_DIMS


def reference_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The same attention in plain torch, one sequence at a time (for checks, not for speed)."""
    n, H, D = q.shape
    block_size, KVH = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    for i in range(n):
        length = int(context_lens[i])
        blocks = block_tables[i, : -(-length // block_size)]
        k = k_cache[blocks].reshape(-1, KVH, D)[:length].transpose(0, 1)  # [KVH, len, D]
        v = v_cache[blocks].reshape(-1, KVH, D)[:length].transpose(0, 1)
        o = torch.nn.functional.scaled_dot_product_attention(
            q[i][:, None].float(), k.float(), v.float(), scale=scale, enable_gqa=True
        )
        out[i] = o[:, 0].to(q.dtype)
    return out


def main() -> int:
    import time

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.monotonic()
    kernel = load_decode_kernel()
    if kernel is None:
        print("paged decode attention op: not available (see the warning above); the engine uses torch")
        return 0
    generator = torch.Generator().manual_seed(0)
    k_cache, v_cache = (torch.randn(64, 16, 3, 64, generator=generator) for _ in range(2))
    q = torch.randn(4, 9, 64, generator=generator)
    tables = torch.randperm(64, generator=generator)[:40].view(4, 10)
    lens = torch.tensor([1, 17, 100, 160])
    error = (
        (kernel(q, k_cache, v_cache, tables, lens, 0.125) - reference_decode(q, k_cache, v_cache, tables, lens, 0.125))
        .abs()
        .max()
    )
    print(
        f"paged decode attention op: ready in {time.monotonic() - start:.1f} s ({build_directory()}); "
        f"max |error| against torch {error:.1e}"
    )
    return 0 if error < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
