"""The machine: CPU and torch facts, CPU taken by other processes, and the measured ceiling (bandwidth, matmul)."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open


def machine_info(dtype: str) -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    flags = next((line for line in _read("/proc/cpuinfo").splitlines() if line.startswith("flags")), "")
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_features": sorted({f for f in flags.split() if f.startswith(("avx512_bf16", "amx", "avx2", "avx512f"))}),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": dtype,
        "loadavg_at_start": os.getloadavg(),
    }


class CpuMeter:
    """How much CPU other processes took while a target ran: the machine may be shared.

    foreign = (all busy CPU time in /proc/stat) - (this process + its reaped children
    + `extra_own_s`, which the triton target sets to its server's process tree), as a
    fraction of cores x wall time.
    """

    def __init__(self, children: bool = True) -> None:
        self.children = children
        self.extra_own_s = 0.0

    def __enter__(self) -> CpuMeter:
        self.start = (time.monotonic(), _busy_cpu_s(), _own_cpu_s(self.children))
        return self

    def __exit__(self, *exc) -> None:
        now = (time.monotonic(), _busy_cpu_s(), _own_cpu_s(self.children))
        wall, busy, own = (b - a for a, b in zip(self.start, now))
        own += self.extra_own_s
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.result = {"wall_s": wall, "own_cpu_s": own, "foreign_cpu_fraction": max(busy - own, 0.0) / (wall * cores)}


def _busy_cpu_s() -> float:
    fields = _read("/proc/stat").splitlines()[0].split()[1:] if _read("/proc/stat") else []
    if len(fields) < 8:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s(children: bool = True) -> float:
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if children else (resource.RUSAGE_SELF,)
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))


def session_cpu_s(session_id: int) -> float:
    """CPU seconds of the live processes in one session (a tritonserver and its Python stubs)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:  # field 6 of /proc/pid/stat: session id
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def measure_ceiling(dtype: str, num_params: int, quick: bool = False) -> dict:
    """Measured read bandwidth and matmul throughput; the bounds are computed per level."""
    torch_dtype = getattr(torch, dtype)
    n = (32 if quick else 256) * 2**20 // 4
    big = torch.ones(n, dtype=torch.float32)
    big.sum()
    read_s = min(timed(big.sum) for _ in range(3 if quick else 7))
    size = 1024 if quick else 2048
    a, b = torch.randn(size, size, dtype=torch_dtype), torch.randn(size, size, dtype=torch_dtype)
    torch.mm(a, b)
    mm_s = min(timed(lambda: torch.mm(a, b)) for _ in range(3 if quick else 5))
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    return {
        "read_bandwidth_gb_s": big.numel() * 4 / read_s / 1e9,
        "matmul_gflop_s": 2 * size**3 / mm_s / 1e9,
        "num_params": num_params,
        "weight_bytes": num_params * itemsize,
        "how": "read bandwidth: torch sum over a 256 MiB fp32 tensor (best of 7); "
        f"matmul: torch.mm {size}x{size} {dtype} (best of 5); both with torch's {torch.get_num_threads()} threads",
    }


def ceiling_tok_s(ceiling: dict, prompt_tokens: int, output_tokens: int, concurrency: int) -> float:
    """O / max(compute time, decode weight-streaming time): see the package docstring."""
    compute_s = 2 * ceiling["num_params"] * (prompt_tokens + output_tokens) / (ceiling["matmul_gflop_s"] * 1e9)
    decode_s = output_tokens / concurrency * ceiling["weight_bytes"] / (ceiling["read_bandwidth_gb_s"] * 1e9)
    return output_tokens / max(compute_s, decode_s)


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def count_params(model_dir: str) -> int:
    """Parameters as stored; a tied lm_head is the embedding, counted once."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key != "lm_head.weight" or not _tied(model_dir):
                    total += int(np.prod(f.get_slice(key).get_shape()))
    return total


def _tied(model_dir: str) -> bool:
    return bool(json.loads((Path(model_dir) / "config.json").read_text()).get("tie_word_embeddings", False))
