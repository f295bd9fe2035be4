"""The generator step on TensorRT (tritonrag.engine.runners.trt_runner): the runner, its profile limits, the runtime choice.

TensorRT cannot run here: there is no GPU, and a TensorRT-RTX engine cannot even be
deserialized without one. So the runner is tested against `OrtStandIn`, which stands in for
the GPU-only TensorRT session: a TrtSession whose GPU half (`_execute`) runs the real exported
step graph with ONNX Runtime on the CPU, while TrtSession's own host half stays: its feed
checks (names, dtypes, shapes against the profile), with a profile derived from the graph's
named axes by the engine builder's own code. It checks everything TrtModelRunner does on the
host; TensorRT's kernels and numerics are only checked by the GPU test at the end, skipped here.

The graph is `make setup`'s (artifacts/onnx/generator/model.onnx); without an up-to-date one
these tests skip (test_onnx_step.py exports one into a temporary folder instead).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from test_onnx_step import KV_ATOL, engine_config, prompts, serve  # noqa: F401 - prompts: a fixture
from test_onnx_step import pytestmark as needs_weights

from tritonrag.compile import trt_build, trt_runtime
from tritonrag.compile.onnx_export import GRAPH_FILE, OnnxRuntime, read_meta
from tritonrag.compile.trt_build import Backend, GraphInput, derive_profile
from tritonrag.compile.trt_runtime import TensorSpec, TrtSession
from tritonrag.engine import factory
from tritonrag.engine.factory import choose_runtime
from tritonrag.engine.runners import trt_runner
from tritonrag.engine.runners.step_export import stale_graph_reason
from tritonrag.engine.runners.step_graph import ONNX_TYPES, generator_dims
from tritonrag.engine.runners.torch_runner import ModelRunner
from tritonrag.engine.runners.trt_runner import GENERATOR_ENGINE, TrtModelRunner
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput, Sequence
from tritonrag.paths import generator_weights_dir, onnx_dir
from tritonrag.sampling import SamplingParams

pytestmark = needs_weights
TYPES = {**ONNX_TYPES, "tensor(int64)": "int64"}
STAND_IN_BACKEND = Backend("tensorrt_rtx", "1.7.1.116", None)  # what the engine cache entries below claim


@pytest.fixture(scope="module")
def step_graph() -> Path:
    folder = onnx_dir() / "generator"
    reason = stale_graph_reason(folder, generator_weights_dir(), "float32")
    if reason:
        pytest.skip(f"no up-to-date generator step graph ({reason}); `make setup` exports it")
    return folder / GRAPH_FILE


@pytest.fixture(scope="module")
def ort_step(step_graph) -> OnnxRuntime:
    """One ONNX Runtime session of the graph (a few seconds to load) for every stand-in."""
    return OnnxRuntime(step_graph)


class OrtStandIn(TrtSession):
    """A TrtSession that runs the step graph with ONNX Runtime on the CPU: the GPU-only TensorRT
    engine's stand-in.

    TrtSession.__init__ is skipped (it deserializes an engine on a GPU); what it would read
    from the engine is read from the graph: the I/O specs (-1 for dynamic axes), and profile
    0 as `make engines` derives it from settings (trt_build.derive_profile over
    generator_dims of `profiled`). `engine_meta` names the graph as engine.json would.
    `steps` records each run's (T, decode sequences, prefill sequences).
    """

    def __init__(self, ort: OnnxRuntime, profiled, num_kv_blocks: int) -> None:
        graph_inputs = ort.session.get_inputs()
        self.ort, self.engine_path, self.device = ort, ort.path, torch.device("cpu")
        self.inputs = [_spec(value) for value in graph_inputs]
        self.outputs = [_spec(value) for value in ort.session.get_outputs()]
        ranges = derive_profile(
            GENERATOR_ENGINE,
            tuple(GraphInput(i.name, tuple(i.shape)) for i in graph_inputs),
            generator_dims(profiled, num_kv_blocks),
        )
        self.profile = {r.name: (r.min, r.max) for r in ranges}
        self.engine_meta = {
            "onnx_path": str(ort.path),
            "key_inputs": {"onnx_sha256": read_meta(ort.path.parent)["sha256"]},
        }
        self.steps: list[tuple[int, int, int]] = []

    def _execute(self, tensors):
        self.steps.append(
            (len(tensors["input_ids"]), len(tensors["decode_past_lens"]), len(tensors["prefill_past_lens"]))
        )
        values = self.ort.run({name: t.numpy() for name, t in tensors.items()}, self.output_names)
        return {name: torch.from_numpy(values[name]) for name in self.output_names}


def _spec(value) -> TensorSpec:
    return TensorSpec(value.name, TYPES[value.type], tuple(d if isinstance(d, int) else -1 for d in value.shape))


def stand_in_config(ort: OnnxRuntime, **overrides):
    return engine_config(runtime="tensorrt", onnx_path=str(ort.path), **overrides)


# ---- the runner's host side, on the stand-in -------------------------------------------------------------
def test_engine_on_the_stand_in_gives_the_torch_engines_greedy_tokens(ort_step, prompts, monkeypatch):
    """Through the factory: three prompts (short, chunked, chunked after a cached prefix), then
    all three decoding in one batch; greedy tokens and the final KV pool as the torch engine's."""
    config = stand_in_config(ort_step)
    session = OrtStandIn(ort_step, config, config.num_kv_blocks)
    monkeypatch.setattr(factory, "tensorrt_unavailable", lambda config: None)  # no GPU, no engine here
    monkeypatch.setattr(trt_runner, "open_step_session", lambda config: session)
    chosen = [prompts[0], prompts[1], prompts[3]]
    trt_engine, got = serve(config, chosen)
    assert type(trt_engine.runner) is TrtModelRunner
    torch_engine, want = serve(engine_config(), chosen)
    assert got == want
    assert (3, 3, 1) in session.steps, "no step decoded all three at once (the prefill group is its dummy)"
    assert max(t for t, _, _ in session.steps) == config.max_num_batched_tokens, "no prefill was chunked"
    torch.testing.assert_close(trt_engine.runner.kv_cache, torch_engine.runner.kv_cache, atol=KV_ATOL, rtol=0)


# ---- profile limits: refused at load, and per step --------------------------------------------------------
@pytest.mark.parametrize(
    "profiled, blocks, message",
    [
        (
            dict(max_num_seqs=2, max_num_batched_tokens=32),
            160,
            r"T 1..48 \(max_num_batched_tokens\) but the engine takes 1..32; decode_seqs 1..4 \(max_num_seqs\) but the engine takes 1..2",
        ),
        (dict(block_size=16), 160, r"block_size 8..8 \(block_size\) but the engine takes 16..16"),
        (dict(), 100, r"num_blocks 1..160 \(the KV pool's blocks: .*\) but the engine takes 1..100"),
        (dict(max_model_len=512), 160, r"decode_past 1..1024 \(max_model_len\) but the engine takes 1..512"),
    ],
)
def test_a_config_past_the_engines_profile_is_refused_at_load(ort_step, profiled, blocks, message):
    session = OrtStandIn(ort_step, stand_in_config(ort_step, **profiled), blocks)
    with pytest.raises(ValueError, match=f"cannot run every step this config schedules: .*{message}.*make engines"):
        TrtModelRunner(stand_in_config(ort_step), session=session)


def test_a_step_past_the_profile_is_refused_before_it_runs(ort_step):
    """Five decodes on an engine profiled for four (the scheduler never sends it: a bug would)."""
    config = stand_in_config(ort_step)
    session = OrtStandIn(ort_step, config, config.num_kv_blocks)
    runner = TrtModelRunner(config, session=session)
    chunks = []
    for i in range(5):
        seq = Sequence(str(i), [1, 2, 3], SamplingParams())
        seq.block_table, seq.num_computed_tokens = [i], 2
        chunks.append(ScheduledChunk(seq, 1))
    with pytest.raises(
        ValueError,
        match=r"'decode_past_slots' has shape \[5, 2\]; the engine's profile accepts "
        r"\[1, 1\] to \[4, 1024\] \(rebuild with larger settings: make engines\)",
    ):
        runner.execute(SchedulerOutput(chunks))
    assert session.steps == [] and not runner.kv_cache.any()
    with pytest.raises(TypeError, match="input 'input_ids' must be int64, got torch.int32"):
        session.check_feeds({"input_ids": torch.zeros(1, dtype=torch.int32)})


# ---- runtime choice --------------------------------------------------------------------------------------
def write_cache_entry(root: Path, session: OrtStandIn) -> Path:
    """An engine cache entry as trt_build writes it (engine.json's fields that serving reads), for the
    stand-in's graph and profile; the engine file is a placeholder nothing deserializes."""
    folder = root / GENERATOR_ENGINE / "0123456789abcdef"
    folder.mkdir(parents=True)
    meta = {
        **session.engine_meta,
        "backend": STAND_IN_BACKEND.name,
        "backend_version": STAND_IN_BACKEND.version,
        "compute_capability": "sm89",
        "built_at": "2026-11-01T00:00:00+00:00",
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in session.inputs],
        "profiles": [
            {
                name: {"min": list(low), "opt": list(high), "max": list(high)}
                for name, (low, high) in session.profile.items()
            }
        ],
    }
    (folder / trt_build.META_FILE).write_text(json.dumps(meta))
    (folder / trt_build.ENGINE_FILE).write_bytes(b"stand-in")
    return folder / trt_build.ENGINE_FILE


@pytest.fixture
def gpu_host(monkeypatch, tmp_path) -> Path:
    """What find_engine sees on a GPU host with TensorRT-RTX: an sm89 GPU, the backend, an engine cache
    (empty: returned to fill). torch still has no GPU: only the choice runs, not the engine."""
    monkeypatch.setattr(trt_runtime, "current_gpu_capability", lambda: "sm89")
    monkeypatch.setattr(trt_runtime, "load_backend", lambda: STAND_IN_BACKEND)
    monkeypatch.setattr(trt_runtime, "engines_dir", lambda: tmp_path / "engines")
    return tmp_path / "engines"


@pytest.mark.parametrize("case", ["fits", "profile too small", "graph exported again"])
def test_tensorrt_is_chosen_only_for_an_engine_that_serves_the_config(ort_step, gpu_host, case):
    config = stand_in_config(ort_step, device="cuda")
    profiled = stand_in_config(ort_step, max_num_seqs=2) if case == "profile too small" else config
    session = OrtStandIn(ort_step, profiled, config.num_kv_blocks)
    if case == "graph exported again":
        session.engine_meta["key_inputs"]["onnx_sha256"] = "0" * 64
    engine = write_cache_entry(gpu_host, session)
    choice = choose_runtime(config)
    if case == "fits":
        assert (choice.name, choice.reasons) == ("tensorrt", ())
        return
    why = {
        "profile too small": "decode_seqs 1..4 (max_num_seqs) but the engine takes 1..2",
        "graph exported again": f"cannot tell which weights {engine} holds: the graph it was built from",
    }[case]
    assert choice.name != "tensorrt" and choice.fell_back
    assert why in choice.reasons[0], choice.reasons


@pytest.mark.parametrize("case", ["cpu", "no tensorrt module", "no engine"])
def test_tensorrt_falls_back_with_the_reason_logged_once(ort_step, gpu_host, monkeypatch, caplog, case):
    device = "cpu" if case == "cpu" else "cuda"
    if case == "no tensorrt module":  # the real load_backend, finding neither module
        monkeypatch.setattr(trt_runtime, "load_backend", trt_build.load_backend)
        for name in trt_build.BACKENDS:
            monkeypatch.setitem(trt_build._MODULES, name, f"no_such_module_{name}")
    why = {
        "cpu": "a TensorRT engine needs a CUDA GPU",
        "no tensorrt module": "no TensorRT backend can be imported",
        "no engine": f"no generator engine in {gpu_host / GENERATOR_ENGINE} built by tensorrt_rtx 1.7.1.116 "
        "for sm89 (the cache holds: nothing); build one: make engines",
    }[case]
    with caplog.at_level(logging.INFO, logger="tritonrag"):
        choice = choose_runtime(stand_in_config(ort_step, device=device))
    assert choice.requested == "tensorrt" and choice.reasons[0].startswith(why), choice.reasons
    # on the CPU the graph serves; on "cuda" onnxruntime needs its CUDA provider (none here: torch)
    assert choice.name in (("onnxruntime",) if device == "cpu" else ("onnxruntime", "torch"))
    records = [r for r in caplog.records if "runtime" in r.getMessage()]
    assert [(r.name, r.levelno, r.getMessage()) for r in records] == [
        ("tritonrag.engine.factory", logging.WARNING, f"tritonrag.engine.factory: {choice.describe()}")
    ]


# ---- the real engine, on a GPU ---------------------------------------------------------------------------
def _backend_for_this_gpu() -> tuple[Backend, str]:
    """(TensorRT backend, this GPU's compute capability) that can build and run here, else skip."""
    try:
        backend = trt_build.load_backend()
    except trt_build.BuildError as exc:
        pytest.skip(str(exc))
    capability = trt_build.current_gpu_capability()
    if backend.is_rtx and capability not in trt_build.rtx_capabilities(backend):
        pytest.skip(f"TensorRT-RTX {backend.version} has no target for this GPU ({capability})")
    return backend, capability


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="TensorRT engines need a GPU (a TensorRT-RTX engine cannot even be deserialized without one)",
)
def test_real_engine_on_cuda_gives_the_torch_engines_greedy_tokens(step_graph, prompts, tmp_path, monkeypatch):
    """Build the step engine for this GPU from the real graph, profiled for the test's config
    (a minute or more), serve through the factory on it, and compare with the torch engine on
    CUDA. fp32 both sides; full TensorRT may use TF32 in its GEMMs, which could flip a near-tied
    greedy token: a mismatch here is worth a look at the logits before blaming the runner."""
    backend, capability = _backend_for_this_gpu()
    config = engine_config(runtime="tensorrt", device="cuda", onnx_path=str(step_graph))
    trt_build.build_engine(
        GENERATOR_ENGINE,
        step_graph,
        generator_dims(config, config.num_kv_blocks),
        backend=backend,
        root=tmp_path,
        compute_capability=capability,
        show_progress=False,
    )
    monkeypatch.setattr(trt_runtime, "engines_dir", lambda: tmp_path)  # find_engine's cache: this one only
    assert choose_runtime(config).name == "tensorrt"
    chosen = [prompts[0], prompts[1], prompts[3]]
    trt_engine, got = serve(config, chosen)
    assert type(trt_engine.runner) is TrtModelRunner and trt_engine.runner.kv_cache.is_cuda
    torch_engine, want = serve(engine_config(device="cuda"), chosen)
    assert type(torch_engine.runner) is ModelRunner
    assert got == want
