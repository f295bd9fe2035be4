"""TensorRT engines for this host's GPU, served through a real tritonserver: the embedder and the generator.

GPU-only (`make gpu-check`); skipped without a CUDA GPU. The engines are built for this GPU with full
TensorRT by build/build_engines.py (a cache hit when `make gpu-check` built them already); the model
repository is a copy of ours with `runtime: tensorrt` for the embedder and for generator version 1, so the
server log must say each of them chose tensorrt (a fallback is logged with its reason and fails here), and
generator version 1's greedy answer must be version 2's (its `v2:runtime`, ONNX Runtime on CUDA, over the same
step graph). Full TensorRT may use TF32 in fp32 GEMMs, which can flip a near-tied greedy token: a mismatch is
worth a look at the logits before blaming the runner.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch

from tritonrag.paths import MODEL_REPOSITORY, REPO_ROOT, artifacts_dir
from tritonrag.triton.server import TritonServer
from tritonrag_clients.streaming import StreamingClient, collect, generator_inputs, rag_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
RUNTIME = re.compile(r'(key: "runtime" value: \{ string_value: )"\w+"')
PROMPT = "The capital of France is"


def with_tensorrt(config: str) -> str:
    assert RUNTIME.search(config), "the config has no runtime parameter"
    return RUNTIME.sub(r'\1"tensorrt"', config)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    built = subprocess.run(
        [sys.executable, str(REPO_ROOT / "build" / "build_engines.py"), "--backend", "tensorrt"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    repository = tmp_path_factory.mktemp("repo") / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, repository)
    for model in ("embedder", "generator"):
        config = repository / model / "config.pbtxt"
        config.write_text(with_tensorrt(config.read_text()))
    instance = TritonServer.on_free_ports(
        model_repository=repository, log_path=artifacts_dir() / "logs" / "test-gpu-server.log"
    )
    with instance:
        yield instance


def test_embedder_and_generator_serve_their_tensorrt_engines(server):
    log = server.log_path.read_text()
    assert re.search(r"embedder: runtime tensorrt", log), "the embedder did not choose its engine (see the log)"
    assert re.search(r"generator version 1: runtime tensorrt", log), "generator v1 did not choose its engine"


def test_rag_answers_through_the_engines(server):
    with StreamingClient(server.grpc_url) as client:
        text, sources, last = collect(client.stream("rag", rag_inputs("How do I read a file line by line?")))
    assert text.strip() and sources and last.error is None


def test_generator_engine_answers_like_the_onnxruntime_version(server):
    sampling = {"max_tokens": 24, "temperature": 0}
    with StreamingClient(server.grpc_url) as client:
        engine_text, _, _ = collect(client.stream("generator", generator_inputs(PROMPT, sampling), model_version="1"))
        ort_text, _, _ = collect(client.stream("generator", generator_inputs(PROMPT, sampling), model_version="2"))
    assert engine_text and engine_text == ort_text
