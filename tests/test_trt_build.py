"""TensorRT engine builds on the CPU with TensorRT for RTX: real engines, the cache, profiles from settings.

Engines are built ahead of time for SM89; they cannot be deserialized without a GPU, so
these tests check what the build records (engine.json) and the cache's behaviour.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip(
    "tensorrt_rtx_bindings", reason="TensorRT for RTX is not installed (pip install 'tritonrag[trt-rtx]')"
)

import onnx  # noqa: E402
import torch  # noqa: E402

from tritonrag.compile import trt_build  # noqa: E402
from tritonrag.compile.trt_build import BuildError, BuildKey, DimRange, UnknownDimension, build_engine, load_backend
from tritonrag.compile.trt_runtime import EngineNotFound, find_engine  # noqa: E402
from tritonrag.paths import MODEL_REPOSITORY  # noqa: E402
from tritonrag.retrieval.export import embedder_dims
from tritonrag.triton import repository  # noqa: E402
from tritonrag.triton.generator_config import engine_config  # noqa: E402
from trt_helpers import export_tiny  # noqa: E402

DIMS = embedder_dims(max_batch_size=8, max_tokens=32)  # batch 1..8, seq 1..32 (opt 8)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("onnx") / "tiny" / "model.onnx")


@pytest.fixture(scope="module")
def rtx():
    backend = load_backend("tensorrt_rtx")
    assert backend.name == "tensorrt_rtx" and backend.is_rtx
    return backend


@pytest.fixture(scope="module")
def built(tiny_onnx, rtx, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    return root, build_engine("tiny", tiny_onnx, DIMS, backend=rtx, root=root, show_progress=False)


# ---- a real build and its record ---------------------------------------------------------


def test_build_writes_engine_and_its_record(built, rtx):
    root, result = built
    assert not result.cache_hit
    assert result.engine_path == root / "tiny" / result.key[:16] / "model.engine"
    assert result.engine_path.stat().st_size == result.size_bytes > 0
    meta = json.loads((result.engine_path.parent / "engine.json").read_text())
    assert meta == result.meta
    assert (meta["backend"], meta["backend_version"], meta["compute_capability"], meta["precision"]) == (
        "tensorrt_rtx",
        rtx.version,
        "sm89",
        "float32",
    )
    assert meta["build_seconds"] > 0
    assert meta["inputs"] == [
        {"name": "input_ids", "shape": [-1, -1], "dtype": "int64", "dim_names": ["batch", "seq"]},
        {"name": "attention_mask", "shape": [-1, -1], "dtype": "int64", "dim_names": ["batch", "seq"]},
    ]
    assert [(o["name"], o["shape"], o["dtype"]) for o in meta["outputs"]] == [("vector", [-1, 8], "float32")]
    profile = {"min": [1, 1], "opt": [8, 8], "max": [8, 32]}
    assert meta["profiles"] == [{"input_ids": profile, "attention_mask": profile}]
    assert meta["key_inputs"]["onnx_sha256"] == trt_build.read_graph(result.meta["onnx_path"]).sha256


def test_second_build_is_a_cache_hit(built, tiny_onnx, rtx):
    root, first = built
    mtime = first.engine_path.stat().st_mtime_ns
    again = build_engine("tiny", tiny_onnx, DIMS, backend=rtx, root=root, show_progress=False)
    assert again.cache_hit and again.key == first.key and again.engine_path == first.engine_path
    assert again.engine_path.stat().st_mtime_ns == mtime  # not rewritten
    assert again.meta["built_at"] == first.meta["built_at"]


def test_force_rebuilds_the_same_key(tiny_onnx, rtx, tmp_path):
    first = build_engine("tiny", tiny_onnx, DIMS, backend=rtx, root=tmp_path, show_progress=False)
    forced = build_engine("tiny", tiny_onnx, DIMS, backend=rtx, root=tmp_path, show_progress=False, force=True)
    assert not forced.cache_hit and forced.key == first.key


def test_a_broken_cache_entry_is_rebuilt(tiny_onnx, rtx, tmp_path):
    first = build_engine("tiny", tiny_onnx, DIMS, backend=rtx, root=tmp_path, show_progress=False)
    first.engine_path.write_bytes(b"truncated")
    again = build_engine("tiny", tiny_onnx, DIMS, backend=rtx, root=tmp_path, show_progress=False)
    assert not again.cache_hit and again.engine_path.stat().st_size == again.size_bytes > 9


def test_another_profile_is_another_engine(built, tiny_onnx, rtx):
    root, first = built
    wider = build_engine("tiny", tiny_onnx, embedder_dims(16, 32), backend=rtx, root=root, show_progress=False)
    assert not wider.cache_hit and wider.key != first.key
    assert wider.meta["profiles"][0]["input_ids"]["max"] == [16, 32]
    assert sorted(p.name for p in (root / "tiny").iterdir()) == sorted([first.key[:16], wider.key[:16]])


def test_another_compute_capability_is_another_engine(built, tiny_onnx, rtx):
    root, first = built
    ampere = build_engine(
        "tiny", tiny_onnx, DIMS, backend=rtx, root=root, compute_capability="SM80", show_progress=False
    )
    assert ampere.key != first.key and ampere.meta["compute_capability"] == "sm80"


def test_every_key_input_changes_the_key():
    profile = trt_build.derive_profile("tiny", (trt_build.GraphInput("x", ("batch", 4)),), DIMS)
    key = BuildKey("0" * 64, "float32", profile, "tensorrt_rtx", "1.7.1.116", "sm89")
    wider = trt_build.derive_profile("tiny", (trt_build.GraphInput("x", ("batch", 4)),), embedder_dims(9, 32))
    changed = [
        replace(key, onnx_sha256="1" * 64),
        replace(key, precision="float16"),
        replace(key, profile=wider),
        replace(key, backend="tensorrt"),
        replace(key, backend_version="1.7.2"),
        replace(key, compute_capability="sm86"),
    ]
    digests = {key.digest} | {k.digest for k in changed}
    assert len(digests) == 1 + len(changed)
    assert replace(key).digest == key.digest


# ---- precision ---------------------------------------------------------------------------


def test_rtx_precision_is_the_graphs_own(tiny_onnx, rtx, tmp_path):
    with pytest.raises(BuildError, match=r"strongly typed.*\(float32\), so float16 cannot be built"):
        build_engine("tiny", tiny_onnx, DIMS, precision="float16", backend=rtx, root=tmp_path, show_progress=False)
    assert not (tmp_path / "tiny").exists()
    assert (
        build_engine(
            "tiny", tiny_onnx, DIMS, precision="float32", backend=rtx, root=tmp_path, show_progress=False
        ).meta["precision"]
        == "float32"
    )


def test_an_fp16_graph_builds_an_fp16_engine(rtx, tmp_path):
    graph = export_tiny(tmp_path / "half" / "model.onnx", torch.float16)
    assert trt_build.read_graph(graph).precision == "float16"
    result = build_engine("tiny", graph, DIMS, backend=rtx, root=tmp_path / "engines", show_progress=False)
    assert result.meta["precision"] == "float16" and result.meta["outputs"][0]["dtype"] == "float16"


def test_full_tensorrt_lowers_only_fp32_graphs():
    full = trt_build.Backend("tensorrt", "10.0", None)
    assert trt_build.choose_precision("bfloat16", "float32", full) == "bfloat16"
    assert trt_build.choose_precision(None, "float16", full) == "float16"
    with pytest.raises(BuildError, match="lowers only float32 graphs"):
        trt_build.choose_precision("float32", "float16", full)
    with pytest.raises(BuildError, match="precision must be one of float32, bfloat16, float16"):
        trt_build.choose_precision("int8", "float32", full)


# ---- profiles from settings --------------------------------------------------------------


def test_an_unknown_dynamic_dimension_is_a_clear_error(tiny_onnx, rtx, tmp_path):
    with pytest.raises(
        UnknownDimension,
        match=r"tiny: input 'input_ids' axis 1 is the dynamic dimension 'seq'.*"
        r"known dimensions: batch",
    ):
        build_engine("tiny", tiny_onnx, {"batch": DIMS["batch"]}, backend=rtx, root=tmp_path, show_progress=False)


def test_an_unnamed_dynamic_dimension_is_a_clear_error():
    with pytest.raises(UnknownDimension, match="axis 0 is dynamic without a name"):
        trt_build.derive_profile("m", (trt_build.GraphInput("x", ("", 3)),), DIMS)


def test_derived_dimensions_follow_their_parts():
    dims = {"P": DimRange(1, 8, 64), "Q": DimRange(1, 1, 16)}
    assert trt_build.resolve_dim("P + Q", dims) == DimRange(2, 9, 80)
    assert trt_build.resolve_dim("2*Q", dims) == DimRange(2, 2, 32)
    with pytest.raises(UnknownDimension, match="R"):
        trt_build.resolve_dim("P + R", dims)


def test_dim_range_is_validated():
    with pytest.raises(ValueError, match="min <= opt <= max"):
        DimRange(4, 2, 8)
    assert DimRange(1, 2, 4).union(DimRange(2, 8, 8)) == DimRange(1, 8, 8)


def _model_config(name: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from tritonrag.paths import MODEL_REPOSITORY

    return text_format.Parse((MODEL_REPOSITORY / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_embedder_profile_comes_from_its_config():
    from tritonrag.defaults import EMBEDDER_MAX_TOKENS

    dims = repository.embedder_settings()
    max_batch = _model_config("embedder").max_batch_size
    assert dims["batch"] == DimRange(1, max_batch, max_batch)
    assert dims["seq"] == DimRange(1, EMBEDDER_MAX_TOKENS // 4, EMBEDDER_MAX_TOKENS)


def test_generator_profile_covers_every_served_version():
    config = _model_config("generator")
    params = {key: value.string_value for key, value in config.parameters.items()}
    versions = [engine_config(params, v, MODEL_REPOSITORY) for v in config.version_policy.specific.versions]
    assert len(versions) >= 2, "the generator serves several versions; the profile must cover each"
    dims = repository.generator_settings()
    for v in versions:
        # fp32 KV per block: 30 layers * 2 (K, V) * block_size tokens * 3 heads * 64 dims * 4 bytes
        blocks = v.kv_cache_memory_bytes // (30 * 2 * v.block_size * 3 * 64 * 4)
        assert dims["num_blocks"].min <= blocks <= dims["num_blocks"].max
        assert dims["T"].max >= v.max_num_batched_tokens and dims["N"].max >= v.max_num_seqs
        assert dims["decode_seqs"].max >= v.max_num_seqs and dims["decode_past"].max >= v.max_model_len
        assert dims["prefill_new"].max >= min(v.max_num_batched_tokens, v.max_model_len)
        assert dims["block_size"] == DimRange.fixed(v.block_size)
    assert dims["num_blocks"].max == max(
        v.kv_cache_memory_bytes // (30 * 2 * v.block_size * 3 * 64 * 4) for v in versions
    )
    assert dims["T"].max == max(v.max_num_batched_tokens for v in versions)
    assert dims["decode_new"] == DimRange.fixed(1)


def test_generator_settings_name_every_axis_of_the_step_graph():
    step_graph = pytest.importorskip("tritonrag.engine.runners.step_graph")
    axes = {name for spec in step_graph.dynamic_axes().values() for name in spec.values()}
    assert axes <= set(repository.generator_settings()), axes - set(repository.generator_settings())


# ---- backend, target, inputs --------------------------------------------------------------


def test_rtx_targets_and_their_errors(rtx):
    assert trt_build.target_capability(rtx, None) == "sm89"
    assert {"sm80", "sm86", "sm89", "sm120"} <= set(trt_build.rtx_capabilities(rtx))
    with pytest.raises(BuildError, match="no Hopper target"):
        trt_build.target_capability(rtx, "sm90")


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="backend must be auto"):
        load_backend("onnx")


def test_missing_graph_and_external_data_are_clear_errors(tiny_onnx, rtx, tmp_path):
    with pytest.raises(BuildError, match="no ONNX graph at .*make onnx"):
        build_engine("tiny", tmp_path / "none.onnx", DIMS, backend=rtx, root=tmp_path, show_progress=False)
    model = onnx.load(str(tiny_onnx))
    onnx.save(model, str(tmp_path / "split.onnx"), save_as_external_data=True, size_threshold=0, location="split.data")
    (tmp_path / "split.data").unlink()
    with pytest.raises(BuildError, match="external data files that are missing: .*split.data"):
        build_engine("tiny", tmp_path / "split.onnx", DIMS, backend=rtx, root=tmp_path, show_progress=False)


def test_external_data_is_part_of_the_hash(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    onnx.save(model, str(tmp_path / "split.onnx"), save_as_external_data=True, size_threshold=0, location="split.data")
    before = trt_build.read_graph(tmp_path / "split.onnx").sha256
    data = bytearray((tmp_path / "split.data").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "split.data").write_bytes(bytes(data))
    assert trt_build.read_graph(tmp_path / "split.onnx").sha256 != before


def test_parser_errors_are_reported(rtx, tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    node = onnx.helper.make_node("NoSuchOp", ["x"], ["y"], domain="tritonrag.test")
    graph = onnx.helper.make_graph([node], "bad", [x], [y])
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid("tritonrag.test", 1)]
    )
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(BuildError, match=r"ONNX parser of tensorrt_rtx .* failed: .*NoSuchOp"):
        build_engine("bad", tmp_path / "bad.onnx", DIMS, backend=rtx, root=tmp_path, show_progress=False)


# ---- finding engines (the runtime's lookup reads engine.json only) -------------------------


def test_find_engine_picks_this_backend_and_target(built, rtx):
    root, result = built
    found = find_engine("tiny", root, rtx, capability="sm89")
    assert found.parent.name in {p.name for p in (root / "tiny").iterdir()}
    assert json.loads((found.parent / "engine.json").read_text())["compute_capability"] == "sm89"
    with pytest.raises(EngineNotFound, match="no tiny engine .* for sm75 .*make engines"):
        find_engine("tiny", root, rtx, capability="sm75")


# ---- the command line ----------------------------------------------------------------------


def test_cli_builds_then_hits_the_cache(tiny_onnx, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_engines", Path(__file__).parents[1] / "build" / "build_engines.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    onnx_root = tmp_path / "onnx"
    (onnx_root / "embedder").mkdir(parents=True)
    (onnx_root / "embedder" / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    args = ["--model", "embedder", "--onnx-dir", str(onnx_root), "--engines-dir", str(tmp_path / "engines")]
    assert cli.main(args) == 0
    assert "built" in capsys.readouterr().out
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "hit" in out and "input_ids int64[-1, -1]" in out
    assert cli.main(args + ["--precision", "bfloat16"]) == 1
    assert "strongly typed" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "--model",
                "generator",
                "--onnx-dir",
                str(tmp_path / "nothing"),
                "--engines-dir",
                str(tmp_path / "engines"),
            ]
        )
        == 1
    )
    assert "make onnx" in capsys.readouterr().out
