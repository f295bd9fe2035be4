"""FAISS inner-product index over unit embeddings: build (flat, IVF, HNSW or IVF-PQ), append, save, load, recall.

Every index is an IndexIDMap2 around the real index, so the ids FAISS returns are the
docstore row ids. An index folder holds:

    faiss.index       the FAISS index
    docstore.sqlite   the chunk texts (tritonrag.retrieval.docstore)
    bm25/             the BM25 index of the same chunks (tritonrag.retrieval.lexical)
    meta.json         kind, dim, count, embedder, chunk settings, fingerprint, recall

Kind by corpus size (`auto`), measured by `make index-bench` (docs/bench/*-index-bench.json):
exact search (flat) below AUTO_FLAT_BELOW vectors, where it is fast enough and needs no
training; IVF-Flat above it (nlist ~ 4 sqrt(n), nprobe tuned at build time to the smallest
power of two that reaches recall@10 >= TARGET_RECALL against exact search on queries near the
data); IVF-PQ when the raw vectors would take more than AUTO_PQ_ABOVE_BYTES (dim / PQ_DIMS_PER_CODE
sub-quantizers of PQ_BITS bits: 96 bytes a vector instead of 1536 for 384-d). HNSW is
available (`--kind hnsw`): fast per query, but its graph build is the slowest on 2 cores and
it cannot delete in place.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from tritonrag.errors import InvalidInput

INDEX_FILE = "faiss.index"
DOCSTORE_FILE = "docstore.sqlite"
META_FILE = "meta.json"
LEXICAL_DIR = "bm25"  # the BM25 index of the same chunks (tritonrag.retrieval.lexical)
KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
AUTO_FLAT_BELOW = 50_000  # exact search over 50k x 384 floats is ~20 ms on one core
AUTO_PQ_ABOVE_BYTES = 8 << 30  # raw float32 vectors beyond 8 GiB: compress with PQ
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
PQ_DIMS_PER_CODE = 4  # dimensions per PQ sub-quantizer: 96 sub-quantizers for 384-d
PQ_BITS = 8
IVF_MIN_POINTS_PER_LIST = 39  # FAISS warns when k-means gets fewer training points per centroid
IVF_TRAIN_PER_LIST = 64  # k-means training sample per list (FAISS caps it at 256; 64 measured as good)
TARGET_RECALL = 0.95


def resolve_kind(kind: str, count: int, dim: int = 384) -> str:
    """'auto' becomes flat, ivf or ivfpq by count (see the module docstring); others pass through."""
    if kind not in KINDS:
        raise InvalidInput(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    if count < AUTO_FLAT_BELOW:
        return "flat"
    return "ivfpq" if count * dim * 4 > AUTO_PQ_ABOVE_BYTES else "ivf"


def ivf_lists(count: int) -> int:
    """nlist ~ 4 sqrt(n), but at most n/39 so every centroid has enough training points."""
    return max(1, min(round(4 * math.sqrt(count)), count // IVF_MIN_POINTS_PER_LIST))


def ivf_probes(nlist: int) -> int:
    """The starting nprobe, nlist/16 (16 at least): tune_nprobe() replaces it once data is added."""
    return min(nlist, max(16, nlist // 16))


def build_index(embeddings: np.ndarray, kind: str = "auto", ids: np.ndarray | None = None) -> faiss.Index:
    """An IndexIDMap2 over a flat, IVF, HNSW or IVF-PQ inner-product index holding embeddings [N, D].

    ids default to 0..N-1 (the docstore's ids for a fresh store). IVF kinds get the nprobe that
    reaches TARGET_RECALL on queries near the data (tune_nprobe).
    """
    vectors = _as_matrix(embeddings)
    count, dim = vectors.shape
    resolved = resolve_kind(kind, count, dim)
    if resolved == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif resolved == "hnsw":
        inner = new_hnsw(dim)
    else:
        inner = trained_ivf(vectors, pq=resolved == "ivfpq")
    index = faiss.IndexIDMap2(inner)
    add(index, vectors, np.arange(count) if ids is None else ids)
    if resolved in ("ivf", "ivfpq") and count:
        tune_nprobe(index, synthetic_queries(vectors, 200, seed=1))
    return index


def pq_subquantizers(dim: int) -> int:
    """The largest divisor of dim that is at most dim / PQ_DIMS_PER_CODE (96 for 384)."""
    return next(m for m in range(max(dim // PQ_DIMS_PER_CODE, 1), 0, -1) if dim % m == 0)


def new_hnsw(dim: int, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION) -> faiss.IndexHNSWFlat:
    inner = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = ef_construction
    inner.hnsw.efSearch = HNSW_EF_SEARCH
    return inner


def trained_ivf(vectors: np.ndarray, pq: bool = False, nlist: int | None = None, seed: int = 1234) -> faiss.IndexIVF:
    """An IVF-Flat (or IVF-PQ) inner-product index, k-means trained on IVF_TRAIN_PER_LIST points a list."""
    if len(vectors) == 0:
        raise InvalidInput("an IVF index needs at least one vector to train on")
    nlist = nlist or ivf_lists(len(vectors))
    dim = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    if pq:
        inner = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_subquantizers(dim), PQ_BITS, faiss.METRIC_INNER_PRODUCT)
    else:
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    inner.cp.seed = seed
    sample = vectors
    if len(vectors) > nlist * IVF_TRAIN_PER_LIST:
        rows = np.random.default_rng(seed).choice(len(vectors), nlist * IVF_TRAIN_PER_LIST, replace=False)
        sample = vectors[np.sort(rows)]
    inner.train(sample)
    inner.nprobe = ivf_probes(nlist)  # the faiss wrapper keeps `quantizer` alive with `inner`
    return inner


def tune_nprobe(index: faiss.Index, queries: np.ndarray, target: float = TARGET_RECALL, k: int = 10) -> int:
    """Set an IVF index's nprobe to the smallest power of two reaching `target` recall@k (else nlist)."""
    ivf = faiss.extract_index_ivf(index)
    queries = _as_matrix(queries)
    truth = exact_neighbours(index, queries, k)
    nprobe = 1
    while nprobe < ivf.nlist:
        ivf.nprobe = nprobe
        if recall_at_k(index.search(queries, truth.shape[1])[1], truth) >= target:
            return nprobe
        nprobe *= 2
    ivf.nprobe = ivf.nlist
    return int(ivf.nlist)


def exact_neighbours(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top k of queries among the index's own vectors (brute force)."""
    ids, vectors = stored_vectors(index)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, rows = exact.search(_as_matrix(queries), min(k, len(ids)))
    return ids[rows]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of truth that the same row of found contains."""
    hits = [len(set(t.tolist()) & set(f[f >= 0].tolist())) for t, f in zip(truth, found)]
    return float(np.mean(hits) / max(truth.shape[1], 1))


def add(index: faiss.Index, embeddings: np.ndarray, ids: np.ndarray) -> None:
    """Add embeddings [N, D] with their int64 ids to an existing index (IVF keeps its trained lists)."""
    vectors = _as_matrix(embeddings)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.shape[1] != index.d:
        raise InvalidInput(f"embedding width {vectors.shape[1]} does not match the index's {index.d}")
    if len(ids) != len(vectors):
        raise InvalidInput(f"{len(ids)} ids for {len(vectors)} embeddings")
    if len(vectors):
        index.add_with_ids(vectors, ids)


def _as_matrix(embeddings: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2:
        raise InvalidInput(f"embeddings must be [N, D], got shape {vectors.shape}")
    return vectors


def describe(index: faiss.Index) -> dict[str, Any]:
    """Kind and search parameters of an index built here, for meta.json and log lines."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIVFPQ):
        pq = {"M": int(inner.pq.M), "bits": int(inner.pq.nbits)}
        return {"kind": "ivfpq", "nlist": int(inner.nlist), "nprobe": int(inner.nprobe), **pq}
    if isinstance(inner, faiss.IndexIVF):
        return {"kind": "ivf", "nlist": int(inner.nlist), "nprobe": int(inner.nprobe)}
    if isinstance(inner, faiss.IndexHNSW):
        return {"kind": "hnsw", "M": HNSW_M, "efSearch": int(inner.hnsw.efSearch)}
    return {"kind": "flat"}


def stored_vectors(index: faiss.IndexIDMap2) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N], vectors [N, D]) held by an index built here; IVF is reconstructed from a copy."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexIVF):
        return ids, inner.reconstruct_n(0, inner.ntotal)
    copy = faiss.clone_index(inner)  # owns the C++ object: keep it referenced while `ivf` is used
    ivf = faiss.downcast_index(copy)
    ivf.make_direct_map()
    return ids, ivf.reconstruct_n(0, ivf.ntotal)


def synthetic_queries(vectors: np.ndarray, count: int = 200, seed: int = 0) -> np.ndarray:
    """Unit midpoints of random pairs of stored vectors: queries near, but not on, the data."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(vectors), size=(count, 2))
    mids = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
    return (mids / np.linalg.norm(mids, axis=1, keepdims=True).clip(min=1e-9)).astype(np.float32)


def measure_recall(index: faiss.Index, queries: np.ndarray, k: int = 10) -> float:
    """recall@k of index against exact inner-product search over the same vectors, averaged over queries."""
    queries = _as_matrix(queries)
    truth = exact_neighbours(index, queries, k)
    return recall_at_k(index.search(queries, truth.shape[1])[1], truth)


def to_gpu_if_available(index: faiss.Index, device: int = 0) -> tuple[faiss.Index, str]:
    """Copy the index to GPU `device` when this faiss build has GPU support and sees a GPU.

    Returns (index, where) with where = 'gpu:<n>' or 'cpu (<reason>)'.
    """
    if not hasattr(faiss, "StandardGpuResources"):
        return index, "cpu (this faiss build has no GPU support)"
    if faiss.get_num_gpus() == 0:
        return index, "cpu (faiss sees no GPU)"
    if describe(index)["kind"] == "hnsw":  # the GPU cloner would silently keep HNSW on the CPU
        return index, "cpu (FAISS has no GPU form of IndexHNSWFlat)"
    try:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, device, index)
    except RuntimeError as exc:
        return index, f"cpu (GPU copy failed: {str(exc).splitlines()[0][:120]})"
    gpu_index.referenced_objects = [resources]  # the GPU index must not outlive its resources
    return gpu_index, f"gpu:{device}"


def save_index(folder: str | Path, index: faiss.Index, meta: dict[str, Any]) -> None:
    """Write faiss.index and meta.json into folder (index must be a CPU index)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / INDEX_FILE))
    write_meta(folder, meta)


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    """Write meta.json (sorted keys, indented, so diffs are readable)."""
    (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """meta.json of an index folder; FileNotFoundError when the folder holds no index."""
    path = Path(folder) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"no index in {folder} ({META_FILE} missing; run build/build_index.py)")
    return json.loads(path.read_text())


def load_index(folder: str | Path) -> tuple[faiss.Index, dict[str, Any]]:
    """(index, meta) read from an index folder."""
    meta = read_meta(folder)
    index = faiss.read_index(str(Path(folder) / INDEX_FILE))
    if index.d != meta["dim"] or index.ntotal != meta["count"]:
        raise ValueError(
            f"{folder}: index has d={index.d} n={index.ntotal}, meta.json says {meta['dim']}/{meta['count']}"
        )
    return index, meta
