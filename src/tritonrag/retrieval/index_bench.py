"""FAISS at scale: recall@10 against exact search, QPS, build time and memory for each index kind.

    python -m tritonrag.retrieval.index_bench [--n 1000000] [--queries 500] [--kinds flat,ivf,ivfpq,hnsw]
                                             [--index DIR] [--json OUT]

Data (stated, since 1M real passages cannot be embedded on 2 cores): the real MiniLM
embeddings of the served index (the standard library's ~8.5k chunks; unit vectors on random
centres when there is no index) are the seeds; each of the N vectors is a perturbed passage,
normalise(a * e_i + (1 - a) * e_j + s * g / sqrt(d)) with seeds e_i, e_j, a ~ U(0.6, 1),
s ~ U(0.2, 0.6) and g standard normal: a passage mostly about one topic, partly about another,
reworded. Queries are the same mixture drawn independently (not stored), so every query has
near neighbours but never an exact copy.

Each kind is built (train + add), its memory taken as its serialized size (what it holds:
vectors or codes, lists, graph; the growth of the resident set is recorded beside it), its recall@10 taken against exact (flat) search, and its QPS at batch 1 and 32
with the machine's threads. IVF kinds sweep nprobe and report the smallest reaching 0.95
(then every swept point); HNSW sweeps efSearch. The GPU column runs when faiss has GPU
support and sees a GPU (faiss-cpu here: stated as skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from tritonrag.paths import index_dir
from tritonrag.retrieval import versions
from tritonrag.retrieval.index import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    PQ_BITS,
    TARGET_RECALL,
    ivf_lists,
    load_index,
    new_hnsw,
    pq_subquantizers,
    recall_at_k,
    stored_vectors,
    trained_ivf,
)

K = 10
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
NPROBES = (4, 8, 16, 32, 64, 128, 256)
EF_SEARCHES = (16, 32, 64, 128, 256)
BATCH1_SECONDS = 8.0  # time spent per batch-1 QPS measurement (at least 20 queries)


def seed_vectors(folder: Path | None, dim: int = 384) -> tuple[np.ndarray, str]:
    """The served index's real embeddings, or (no index) unit vectors around 2,000 random centres."""
    try:
        index, _ = load_index(versions.current(folder or index_dir()))
        _, vectors = stored_vectors(index)
        return vectors.astype(np.float32), f"{len(vectors)} real MiniLM chunk embeddings ({folder or index_dir()})"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((2000, dim)).astype(np.float32)
        return _unit(centres), "2000 random unit centres (no index was built)"


def perturbed(seeds: np.ndarray, n: int, seed: int, block: int = 100_000) -> np.ndarray:
    """n vectors of the stated mixture (module docstring), generated in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, seeds.shape[1]), dtype=np.float32)
    for first in range(0, n, block):
        m = min(block, n - first)
        a = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
        s = rng.uniform(0.2, 0.6, (m, 1)).astype(np.float32)
        noise = rng.standard_normal((m, seeds.shape[1]), dtype=np.float32) / np.sqrt(seeds.shape[1])
        mixed = a * seeds[rng.integers(0, len(seeds), m)] + (1 - a) * seeds[rng.integers(0, len(seeds), m)]
        out[first : first + m] = _unit(mixed + s * noise)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-9)).astype(np.float32)


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def qps(index: faiss.Index, queries: np.ndarray, batch: int, seconds: float = BATCH1_SECONDS) -> float:
    """Queries per second at a batch size; batch 1 runs for about `seconds` (at least 20 queries)."""
    if batch == 1:
        started, done = time.perf_counter(), 0
        while done < len(queries) and (done < 20 or time.perf_counter() - started < seconds):
            index.search(queries[done : done + 1], K)
            done += 1
        return done / (time.perf_counter() - started)
    started = time.perf_counter()
    for first in range(0, len(queries), batch):
        index.search(queries[first : first + batch], K)
    return len(queries) / (time.perf_counter() - started)


def build(kind: str, data: np.ndarray, bar) -> tuple[faiss.Index, dict[str, Any]]:
    """A kind's index over data, with its parameters, build seconds and resident-memory growth."""
    before, started = rss_bytes(), time.perf_counter()
    dim = data.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        params: dict[str, Any] = {}
    elif kind == "hnsw":
        index = new_hnsw(dim)
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    else:
        bar.set_postfix_str(f"{kind}: k-means")
        index = trained_ivf(data, pq=kind == "ivfpq")
        params = {"nlist": int(index.nlist), "train_points": int(min(len(data), index.nlist * 64))}
        if kind == "ivfpq":
            params.update({"M": pq_subquantizers(data.shape[1]), "bits": PQ_BITS})
    bar.set_postfix_str(f"{kind}: adding")
    for first in range(0, len(data), 50_000):
        index.add(data[first : first + 50_000])
    seconds = time.perf_counter() - started
    grown = (rss_bytes() - before) / 2**20
    size = faiss.serialize_index(index).nbytes / 2**20
    return index, {
        "params": params,
        "build_s": round(seconds, 1),
        "memory_mib": round(size),
        "rss_growth_mib": round(grown),
    }


def sweep(
    kind: str, index: faiss.Index, queries: np.ndarray, truth: np.ndarray, seconds: float
) -> list[dict[str, Any]]:
    """(setting, recall@10, QPS at batch 1 and 32) for each search setting of the kind."""
    if kind == "flat":
        settings: list[tuple[str, int]] = [("exact", 0)]
    elif kind == "hnsw":
        settings = [("efSearch", ef) for ef in EF_SEARCHES]
    else:
        settings = [("nprobe", p) for p in NPROBES if p <= index.nlist]
    rows = []
    for name, value in settings:
        if name == "efSearch":
            index.hnsw.efSearch = value
        elif name == "nprobe":
            index.nprobe = value
        recall = recall_at_k(index.search(queries, K)[1], truth)
        row = {name: value, "recall@10": round(recall, 4)} if value else {"recall@10": round(recall, 4)}
        row.update({"qps_b1": round(qps(index, queries, 1, seconds), 1), "qps_b32": round(qps(index, queries, 32), 1)})
        rows.append(row)
        if name != "exact" and recall >= 0.995:
            break
    return rows


def gpu_note() -> str:
    if not hasattr(faiss, "StandardGpuResources"):
        return "skipped: this faiss build (faiss-cpu) has no GPU support"
    if faiss.get_num_gpus() == 0:
        return "skipped: faiss sees no GPU"
    return "available (not measured by this version of the bench)"


def run(
    n: int, n_queries: int, kinds: list[str], folder: Path | None, seconds: float = BATCH1_SECONDS
) -> dict[str, Any]:
    """Build every kind over the same n vectors and measure it; returns the whole result."""

    seeds, seed_source = seed_vectors(folder)
    result: dict[str, Any] = {
        "n": n,
        "dim": int(seeds.shape[1]),
        "queries": n_queries,
        "k": K,
        "data": f"perturbed passages from {seed_source} (see module docstring)",
        "machine": _machine(),
        "load_before": os.getloadavg()[0],
        "gpu": gpu_note(),
        "kinds": {},
    }
    with tqdm(total=2 + len(kinds), desc="index-bench", unit="step") as bar:
        bar.set_postfix_str("generating data")
        data = perturbed(seeds, n, seed=1)
        queries = perturbed(seeds, n_queries, seed=2)
        bar.update()
        bar.set_postfix_str("exact ground truth")
        exact = faiss.IndexFlatIP(data.shape[1])
        exact.add(data)
        truth = exact.search(queries, K)[1]
        bar.update()
        del exact
        for kind in kinds:
            index, built = build(kind, data, bar)
            bar.set_postfix_str(f"{kind}: searching")
            built["search"] = sweep(kind, index, queries, truth, seconds)
            result["kinds"][kind] = built
            del index
            bar.update()
    result["load_after"] = os.getloadavg()[0]
    result["summary"] = summarise(result)
    return result


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per kind: its cheapest setting reaching TARGET_RECALL (or its best), and speed-up over exact."""
    kinds = result["kinds"]
    exact = kinds.get("flat", {}).get("search", [{}])[0]
    rows = []
    for kind, built in kinds.items():
        reached = [r for r in built["search"] if r["recall@10"] >= TARGET_RECALL]
        best = reached[0] if reached else max(built["search"], key=lambda r: r["recall@10"])
        row = {"kind": kind, **built["params"], **best, "build_s": built["build_s"], "memory_mib": built["memory_mib"]}
        if exact.get("qps_b1"):
            row["speedup_b1"] = round(best["qps_b1"] / exact["qps_b1"], 1)
            row["speedup_b32"] = round(best["qps_b32"] / exact["qps_b32"], 1)
        rows.append(row)
    return rows


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), {platform.python_version()}"


def print_table(result: dict[str, Any]) -> None:

    table = Table(title=f"{result['n']:,} x {result['dim']}-d, {result['queries']} queries, recall@{K} vs exact")
    columns = [
        "kind",
        "setting",
        "recall@10",
        "qps_b1",
        "qps_b32",
        "speedup_b1",
        "speedup_b32",
        "build_s",
        "memory_mib",
    ]
    for c in columns:
        table.add_column(c, justify="right")
    for row in result["summary"]:
        setting = ", ".join(f"{k}={row[k]}" for k in ("nlist", "nprobe", "M", "bits", "efSearch") if k in row)
        table.add_row(row["kind"], setting or "-", *(str(row.get(c, "")) for c in columns[2:]))
    Console(width=160).print(table)
    print(f"machine: {result['machine']}; load {result['load_before']:.2f} -> {result['load_after']:.2f}")
    print(f"data: {result['data']}; GPU: {result['gpu']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, from {KINDS}")
    parser.add_argument("--index", type=Path, default=None, help="index home whose embeddings seed the data")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--batch1-seconds", type=float, default=BATCH1_SECONDS, help="time per batch-1 QPS point")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    if "flat" not in kinds:
        kinds.insert(0, "flat")  # the speed-ups are against exact search
    if ivf_lists(args.n) < 2 and ({"ivf", "ivfpq"} & set(kinds)):
        raise SystemExit(f"--n {args.n} is too small for IVF ({ivf_lists(args.n)} list)")
    result = run(args.n, args.queries, kinds, args.index, args.batch1_seconds)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
