"""The FAISS scale bench on a small n (the 1M run is `make index-bench`): kinds measured against exact search."""

from __future__ import annotations

import json

from tritonrag.retrieval import index_bench


def test_small_bench_measures_every_kind(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # IVF-PQ's sub-quantizer training dominates at this size; its build is tested in test_retrieval_index.
    index_bench.main(
        ["--n", "10000", "--queries", "100", "--kinds", "ivf,hnsw", "--batch1-seconds", "0.2", "--json", str(out)]
    )
    result = json.loads(out.read_text())
    assert set(result["kinds"]) == {"flat", "ivf", "hnsw"} and result["n"] == 10000  # flat is always measured
    exact = result["kinds"]["flat"]["search"][0]
    assert exact["recall@10"] == 1.0 and exact["qps_b1"] > 0 and exact["qps_b32"] > 0
    for kind in ("ivf", "hnsw"):
        assert max(r["recall@10"] for r in result["kinds"][kind]["search"]) >= 0.9, kind
    summary = {row["kind"]: row for row in result["summary"]}
    assert summary["ivf"]["nlist"] > 1 and "speedup_b1" in summary["ivf"]
    assert "recall@10" in capsys.readouterr().out  # the table


def test_data_is_unit_vectors_near_their_seeds():
    import numpy as np

    seeds = index_bench._unit(np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32))
    data = index_bench.perturbed(seeds, 1000, seed=3)
    assert np.allclose(np.linalg.norm(data, axis=1), 1.0, atol=1e-5)
    assert (data @ seeds.T).max(axis=1).mean() > 0.6  # each is close to some seed
