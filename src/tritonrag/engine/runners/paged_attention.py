"""The engine's CPU kernels (csrc/): paged attention read in place from the KV cache, and fused small ops.

Why: the torch path gathers every sequence's keys and values out of the pool into a
padded copy and runs SDPA over the copy, so each key crosses memory three times; at
concurrency 32 on a 2-core CPU decode is bound by memory bandwidth, and that gather was
the largest single cost of a step (41% in a profile of the c=32 benchmark). torch's CPU
flash attention, for prefill chunks, ran at ~25 GFLOP/s in fp32 and bf16 alike. And a
decode step at batch 1 is ~1,000 small torch ops (RMSNorm alone is eight), whose dispatch
costs as much as the matmuls. The extension has:

    paged_attention     decodes and prefill chunks of a packed batch, causal, keys and
                        values read once through the block tables (fp32 accumulation)
    rms_norm, add_rms_norm, rope_kv_write, silu_mul
                        the decoder's elementwise steps, one pass each, rounding where
                        torch's op sequences round (tritonrag.engine.runners.llama)

They are torch ops (torch.ops.tritonrag.*: torch.profiler names them), compiled with
torch's extension builder for this machine's CPU (`-march=native`; AVX-512 and its bf16
loads where the CPU has them, plain C++ elsewhere) into
artifacts/torch_extensions/<CPU fingerprint>/, by `make setup` or on first use. Where it
cannot be built or loaded (no compiler, another platform), or TRITONRAG_PAGED_DECODE=0,
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
from dataclasses import dataclass
from pathlib import Path

import torch

from tritonrag.paths import artifacts_dir

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
EXTENSION_NAME = "tritonrag_cpu_kernels"
HEAD_DIMS = (64, 128)  # the head dims paged_attention is compiled for
GROUPS = (1, 2, 3, 4, 8)  # and the query heads per KV head
DecodeKernel = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class CpuKernels:
    """The extension's ops (torch.ops.tritonrag.*); see csrc/ for what each computes."""

    # (q, k_cache, v_cache, block_tables, context_lens, query_starts, scale)
    paged_attention: Callable[..., torch.Tensor]
    rms_norm: Callable[..., torch.Tensor]  # (x, weight, eps)
    add_rms_norm: Callable[..., torch.Tensor]  # (x, residual (updated in place), weight, eps)
    rope_kv_write: Callable[..., torch.Tensor]  # (qkv, cos, sin, slot_mapping, k_cache, v_cache, num_heads) -> q
    silu_mul: Callable[..., torch.Tensor]  # (gate_up) -> silu(gate) * up


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
def load_kernels() -> CpuKernels | None:
    """The extension's ops, built or found for this CPU; None where unavailable (logged once)."""
    reason = disabled_reason()
    if reason is None:
        try:
            _build()
            ops = torch.ops.tritonrag
            return CpuKernels(ops.paged_attention, ops.rms_norm, ops.add_rms_norm, ops.rope_kv_write, ops.silu_mul)
        except Exception as exc:  # a missing compiler or a failed build must not stop the engine
            reason = f"could not build {CSRC.name}/: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
    log.warning("CPU kernels unavailable (%s): attention and the small ops run as plain torch", reason)
    return None


def load_decode_kernel() -> DecodeKernel | None:
    """`paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)`, or None (logged):
    paged_attention with one query per sequence."""
    return torch.ops.tritonrag.paged_decode_attention if load_kernels() is not None else None


def _build() -> None:
    from torch.utils.cpp_extension import load

    # torch finds ninja on PATH; the pip `ninja` package puts it beside this interpreter,
    # which a `.venv/bin/python ...` call does not put on PATH
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    load(
        EXTENSION_NAME,
        [str(path) for path in sorted(CSRC.glob("*.cpp"))],
        build_directory=str(directory),
        # -ffp-contract=off: a * b + c rounds twice, as torch's separate ops do (see csrc/cpu_vec.h)
        extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,  # loads it: the ops register with torch (torch.ops.tritonrag)
        verbose=False,
    )


def kernel_supports(head_dim: int, device: torch.device | str, groups: int = 3) -> bool:
    """paged_attention is compiled for this head dim and query heads per KV head, on the CPU."""
    return torch.device(device).type == "cpu" and head_dim in HEAD_DIMS and groups in GROUPS


def reference_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_starts: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """paged_attention in plain torch, one sequence at a time, fp32 (for checks, not for speed)."""
    D, block_size, KVH = q.shape[2], k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    for s in range(len(context_lens)):
        first, end, length = int(query_starts[s]), int(query_starts[s + 1]), int(context_lens[s])
        blocks = block_tables[s, : -(-length // block_size)]
        k = k_cache[blocks].reshape(-1, KVH, D)[:length].transpose(0, 1).float()  # [KVH, len, D]
        v = v_cache[blocks].reshape(-1, KVH, D)[:length].transpose(0, 1).float()
        positions = torch.arange(length - (end - first), length)
        mask = torch.arange(length)[None, :] <= positions[:, None]  # causal
        o = torch.nn.functional.scaled_dot_product_attention(
            q[first:end].transpose(0, 1).float(), k, v, attn_mask=mask, scale=scale, enable_gqa=True
        )
        out[first:end] = o.transpose(0, 1).to(q.dtype)
    return out


def reference_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """reference_attention with one query per sequence, at its last position."""
    starts = torch.arange(q.shape[0] + 1)
    return reference_attention(q, k_cache, v_cache, block_tables, context_lens, starts, scale)


def main() -> int:
    import time

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.monotonic()
    kernels = load_kernels()
    if kernels is None:
        print("CPU kernels: not available (see the warning above); the engine uses torch")
        return 0
    generator = torch.Generator().manual_seed(0)
    k_cache, v_cache = (torch.randn(64, 16, 3, 64, generator=generator) for _ in range(2))
    tables = torch.randperm(64, generator=generator)[:40].view(4, 10)
    lens, starts = torch.tensor([1, 17, 100, 160]), torch.tensor([0, 1, 2, 40, 61])  # 2 decodes, 2 prefill chunks
    q = torch.randn(61, 9, 64, generator=generator)
    got = kernels.paged_attention(q, k_cache, v_cache, tables, lens, starts, 0.125)
    error = (got - reference_attention(q, k_cache, v_cache, tables, lens, starts, 0.125)).abs().max()
    print(
        f"CPU kernels: ready in {time.monotonic() - start:.1f} s ({build_directory()}); "
        f"paged attention's max |error| against torch {error:.1e}"
    )
    return 0 if error < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
