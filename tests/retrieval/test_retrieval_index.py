"""FAISS index: flat / IVF / HNSW build, ids, append, save/load, recall against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from tritonrag.errors import InvalidInput
from tritonrag.retrieval import index as ix


def _unit(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 random centres: clustered like real text embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d))
    x = (centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_kind_follows_corpus_size_and_memory():
    assert ix.resolve_kind("auto", 10) == "flat"
    assert ix.resolve_kind("auto", ix.AUTO_FLAT_BELOW) == "ivf"
    assert ix.resolve_kind("auto", ix.AUTO_PQ_ABOVE_BYTES // (384 * 4) + 1) == "ivfpq"
    assert ix.resolve_kind("hnsw", 10) == "hnsw"
    with pytest.raises(InvalidInput):
        ix.resolve_kind("lsh", 10)
    assert ix.ivf_lists(10) == 1 and ix.ivf_lists(1_000_000) == 4000


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_each_kind_returns_the_given_ids_and_finds_itself(kind):
    vectors = _unit(2000)
    ids = np.arange(2000) + 1000
    index = ix.build_index(vectors, kind, ids=ids)
    assert ix.describe(index)["kind"] == kind and index.ntotal == 2000
    scores, found = index.search(vectors[:50], 5)
    assert (found[:, 0] == ids[:50]).mean() >= (0.8 if kind == "ivfpq" else 0.95)  # PQ codes are lossy
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind, floor", [("flat", 1.0), ("ivf", 0.95), ("hnsw", 0.95)])
def test_recall_against_exact_search(kind, floor):
    vectors = _unit(3000, seed=1)
    index = ix.build_index(vectors, kind)
    recall = ix.measure_recall(index, ix.synthetic_queries(vectors, 100), k=10)
    assert floor <= recall <= 1.0


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_append_save_and_load(tmp_path, kind):
    first, second = _unit(1200, seed=2), _unit(300, seed=3)
    index = ix.build_index(first, kind)
    ix.add(index, second, np.arange(1200, 1500))
    ix.save_index(tmp_path, index, {"dim": 32, "count": 1500, "kind": kind})
    loaded, meta = ix.load_index(tmp_path)
    assert meta["kind"] == kind and loaded.ntotal == 1500
    assert ix.describe(loaded) == ix.describe(index)
    _, found = loaded.search(second[:20], 1)
    assert (found[:, 0] == np.arange(1200, 1220)).mean() >= 0.95
    ids, vectors = ix.stored_vectors(loaded)
    assert sorted(ids) == list(range(1500)) and vectors.shape == (1500, 32)


def test_add_checks_shapes():
    index = ix.build_index(_unit(10), "flat")
    with pytest.raises(InvalidInput):
        ix.add(index, _unit(3, d=16), np.arange(3))
    with pytest.raises(InvalidInput):
        ix.add(index, _unit(3), np.arange(2))


def test_load_rejects_meta_that_disagrees(tmp_path):
    ix.save_index(tmp_path, ix.build_index(_unit(10), "flat"), {"dim": 32, "count": 11})
    with pytest.raises(ValueError, match="meta.json"):
        ix.load_index(tmp_path)
    with pytest.raises(FileNotFoundError):
        ix.read_meta(tmp_path / "nowhere")


def test_gpu_copy_says_where_the_index_lives():
    import faiss

    hnsw = ix.build_index(_unit(10), "hnsw")
    moved, where = ix.to_gpu_if_available(hnsw)
    assert moved is hnsw and where.startswith("cpu (")  # FAISS has no GPU HNSW
    flat = ix.build_index(_unit(10), "flat")
    moved, where = ix.to_gpu_if_available(flat)
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        assert moved is flat and where.startswith("cpu (")
    else:
        assert where == "gpu:0" and moved.search(_unit(10)[:1], 1)[1][0, 0] == 0


def test_ivf_nprobe_is_tuned_to_the_target_recall():
    vectors = _unit(6000, d=48, seed=4)
    index = ix.build_index(vectors, "ivf")
    params = ix.describe(index)
    assert params["kind"] == "ivf" and 1 <= params["nprobe"] <= params["nlist"]
    queries = ix.synthetic_queries(vectors, 200, seed=9)  # not the queries it was tuned on
    assert ix.measure_recall(index, queries) >= ix.TARGET_RECALL - 0.03
    if params["nprobe"] > 1:  # the next smaller power of two fell short on the tuning queries
        faiss_ivf = __import__("faiss").extract_index_ivf(index)
        faiss_ivf.nprobe = params["nprobe"] // 2
        assert ix.measure_recall(index, ix.synthetic_queries(vectors, 200, seed=1)) < ix.TARGET_RECALL


def test_delete_by_id_in_flat_and_ivf():
    vectors = _unit(3000, seed=5)
    for kind in ("flat", "ivf"):
        index = ix.build_index(vectors, kind)
        index.remove_ids(np.arange(0, 3000, 2, dtype=np.int64))
        _, found = index.search(vectors[:20], 3)
        assert index.ntotal == 1500 and not (found[found >= 0] % 2 == 0).any()
