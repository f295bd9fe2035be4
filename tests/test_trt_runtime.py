"""The tensorrt runtime on a CUDA GPU: a built engine loads, runs with torch tensors and matches ONNX Runtime.

GPU-only. It builds its engines with whichever TensorRT is importable (full TensorRT for
this GPU, or TensorRT for RTX when it has a target for this GPU) and skips elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tritonrag.compile import trt_build
from tritonrag.retrieval.export import embedder_dims
from trt_helpers import export_tiny

SKIP_REASON = "no CUDA GPU / no tensorrt here"


def _backend_for_this_gpu():
    """(backend, compute capability) that can build and run here, or None."""
    if not torch.cuda.is_available():
        return None
    try:
        backend = trt_build.load_backend()
    except trt_build.BuildError:
        return None
    capability = trt_build.current_gpu_capability()
    if backend.is_rtx and capability not in trt_build.rtx_capabilities(backend):
        return None  # e.g. Hopper (sm90): TensorRT-RTX 1.7 has no target for it
    return backend, capability


RUNNABLE = _backend_for_this_gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(RUNNABLE is None, reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def engine_root(tmp_path_factory):
    backend, capability = RUNNABLE
    root = tmp_path_factory.mktemp("engines")
    graph = export_tiny(tmp_path_factory.mktemp("onnx") / "model.onnx")
    trt_build.build_engine(
        "tiny",
        graph,
        embedder_dims(8, 32),
        backend=backend,
        root=root,
        compute_capability=capability,
        show_progress=False,
    )
    return root, graph


@pytest.fixture(scope="module")
def session(engine_root):
    from tritonrag.compile.trt_runtime import load_session

    return load_session("tiny", engine_root[0], RUNNABLE[0])


def _feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + seq)
    ids = rng.integers(0, 100, (batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq // 2 + 1 :] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("batch, seq", [(1, 1), (3, 7), (8, 32)])
def test_engine_matches_onnxruntime(engine_root, session, batch, seq):
    import onnxruntime

    feeds = _feeds(batch, seq)
    want = onnxruntime.InferenceSession(str(engine_root[1]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    (got,) = session.run(None, feeds)
    torch.cuda.current_stream().synchronize()
    assert got.is_cuda and tuple(got.shape) == (batch, 8)
    np.testing.assert_allclose(got.cpu().numpy(), want, atol=1e-4, rtol=1e-4)


def test_torch_cuda_inputs_stay_on_the_device(session):
    feeds = {name: torch.from_numpy(a).cuda() for name, a in _feeds(2, 4).items()}
    (got,) = session.run(["vector"], feeds)
    assert got.device == feeds["input_ids"].device


def test_bad_feeds_are_clear_errors(session):
    feeds = _feeds(2, 4)
    with pytest.raises(ValueError, match=r"shape \[9, 4\]; the engine's profile accepts \[1, 1\] to \[8, 32\]"):
        session.run(None, _feeds(9, 4))
    with pytest.raises(TypeError, match="input_ids' must be int64, got torch.int32"):
        session.run(None, {**feeds, "input_ids": feeds["input_ids"].astype(np.int32)})
    with pytest.raises(ValueError, match="missing input 'attention_mask'"):
        session.run(None, {"input_ids": feeds["input_ids"]})


def test_find_engine_uses_this_gpus_capability(engine_root):
    from tritonrag.compile.trt_runtime import find_engine

    path = find_engine("tiny", engine_root[0], RUNNABLE[0])
    assert path.name == "model.engine" and Path(path).parent.parent.name == "tiny"
