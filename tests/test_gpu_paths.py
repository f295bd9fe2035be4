"""GPU paths of retrieval: FAISS on the GPU and ONNX Runtime's CUDA provider, each against its CPU twin.

GPU-only (`make gpu-check` runs them); skipped without a CUDA GPU. On a GPU host they fail, not skip, when
the installed variant has no GPU support: making that impossible is what the gpu install variant is for.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tritonrag.retrieval.embedder import Embedder, default_onnx_path
from tritonrag.retrieval.index import to_gpu_if_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TEXTS = ["How do I read a file line by line?", "What does the with statement do?", "Sort a list of tuples by key."]


def test_faiss_index_moves_to_the_gpu_and_finds_what_the_cpu_finds():
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5000, 384)).astype(np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(384))
    index.add_with_ids(vectors, np.arange(10_000, 15_000, dtype=np.int64))
    queries = vectors[:32] + 0.05 * rng.standard_normal((32, 384)).astype(np.float32)

    gpu_index, where = to_gpu_if_available(index)
    assert where == "gpu:0", f"{where}: install the gpu variant (make setup VARIANT=gpu)"
    cpu_scores, cpu_ids = index.search(queries, 10)
    gpu_scores, gpu_ids = gpu_index.search(queries, 10)
    assert (gpu_ids == cpu_ids).all()
    np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)


def test_embedder_on_onnxruntime_cuda_matches_torch_on_the_cpu():
    if not default_onnx_path().exists():
        pytest.skip(f"no embedder graph at {default_onnx_path()}: make setup exports it")
    import onnxruntime

    assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), "install the gpu variant (onnxruntime-gpu)"
    on_gpu = Embedder(device="cuda", runtime="onnxruntime")
    assert on_gpu.runtime_choice.name == "onnxruntime", on_gpu.runtime_choice.describe()
    got = on_gpu.embed(TEXTS)
    # ONNX Runtime falls back to the CPU provider silently when CUDA's cannot load (cuDNN, CUDA libraries).
    assert on_gpu.runtime.session.get_providers()[0] == "CUDAExecutionProvider"
    want = Embedder(device="cpu", runtime="torch").embed(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-4)
