"""Real TensorRT-RTX engines of our models, built on the CPU for SM89 from their exported ONNX graphs.

The graph comes from `make onnx` (artifacts/onnx/<model>/) when it is there and up to date,
else it is exported here. Both run in CI: the embedder (export ~25 s if needed + build ~5 s on 2 cores) and the
generator step from the graph `make setup` exports (its 544 MB graph builds in 50-100 s on
2 cores). Without that graph the generator test exports it only under TRITONRAG_SLOW=1
(2-8 min more), and otherwise skips saying so. Engines go to a
temporary cache; the checks are what engine.json records: size, I/O, the profile.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip(
    "tensorrt_rtx_bindings", reason="TensorRT for RTX is not installed (pip install 'tritonrag[trt-rtx]')"
)

from tritonrag.compile.trt_build import build_engine, load_backend  # noqa: E402
from tritonrag.paths import generator_weights_dir, onnx_dir  # noqa: E402
from tritonrag.triton.repository import embedder_settings, generator_settings

SLOW = os.environ.get("TRITONRAG_SLOW") == "1"


def _embedder_graph(tmp_path: Path) -> Path:
    from tritonrag.compile.onnx_export import stale_reason
    from tritonrag.paths import embedder_model_dir
    from tritonrag.retrieval.export import export_embedder

    checkpoint, folder = embedder_model_dir(), onnx_dir() / "embedder"
    if (folder / "model.onnx").is_file() and stale_reason(folder, checkpoint) is None:
        return folder / "model.onnx"
    export_embedder(checkpoint, tmp_path / "embedder")
    return tmp_path / "embedder" / "model.onnx"


def _generator_graph(tmp_path: Path) -> Path:
    from tritonrag.engine.runners.step_export import export_generator_step, stale_graph_reason

    weights, folder = generator_weights_dir(), onnx_dir() / "generator"
    if not (weights / "config.json").is_file():
        pytest.skip(f"no generator weights at {weights} (make setup)")
    if stale_graph_reason(folder, weights, "float32") is None:
        return folder / "model.onnx"
    if not SLOW:
        pytest.skip(
            f"no up-to-date generator step graph in {folder} (make setup exports it); "
            "exporting it here takes minutes: set TRITONRAG_SLOW=1"
        )
    return export_generator_step(weights, tmp_path / "generator")


def test_embedder_engine(tmp_path):
    result = build_engine(
        "embedder",
        _embedder_graph(tmp_path),
        embedder_settings(),
        backend=load_backend("tensorrt_rtx"),
        root=tmp_path / "engines",
        show_progress=False,
    )
    meta = result.meta
    assert (meta["compute_capability"], meta["precision"]) == ("sm89", "float32")
    assert result.size_bytes > 80 * 2**20  # 22.7M fp32 weights live in the engine
    assert [(i["name"], i["dtype"], i["shape"]) for i in meta["inputs"]] == [
        ("input_ids", "int64", [-1, -1]),
        ("attention_mask", "int64", [-1, -1]),
    ]
    outputs = {o["name"]: (o["dtype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["embedding"] == ("float32", [-1, 384])
    dims = embedder_settings()
    assert meta["profiles"][0]["input_ids"] == {
        "min": [1, 1],
        "opt": [dims["batch"].opt, dims["seq"].opt],
        "max": [dims["batch"].max, dims["seq"].max],
    }
    print(f"embedder engine: {result.size_bytes / 2**20:.1f} MiB, built in {result.build_seconds:.1f} s")


def test_generator_step_engine(tmp_path):
    result = build_engine(
        "generator",
        _generator_graph(tmp_path),
        generator_settings(),
        backend=load_backend("tensorrt_rtx"),
        root=tmp_path / "engines",
        show_progress=False,
    )
    meta = result.meta
    assert result.size_bytes > 500 * 2**20  # 135M fp32 weights live in the engine
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["kv_cache"]["shape"] == [30, 2, -1, -1, 3, 64] and inputs["kv_cache"]["dtype"] == "float32"
    assert inputs["input_ids"]["dtype"] == "int64"
    outputs = {o["name"]: (o["dtype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["logits"] == ("float32", [-1, 49152])
    assert outputs["new_kv"] == ("float32", [30, 2, -1, 3, 64])
    profile, dims = meta["profiles"][0], generator_settings()
    assert profile["kv_cache"]["max"] == [30, 2, dims["num_blocks"].max, dims["block_size"].max, 3, 64]
    assert profile["input_ids"] == {"min": [1], "opt": [dims["T"].opt], "max": [dims["T"].max]}
    print(f"generator step engine: {result.size_bytes / 2**20:.1f} MiB, built in {result.build_seconds:.1f} s")
