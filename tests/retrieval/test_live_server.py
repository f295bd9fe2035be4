"""Live index updates through a real tritonserver: the `retriever` model is called without pause from
four threads while `python -m tritonrag.retrieval.index_cli add` and `delete` change its index.

No request may fail, the added document must become retrievable and the deleted one must
disappear, without restarting or reloading the model. The server holds only the retriever (a
copy of model_repository/retriever over a small index home), so it starts in seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tritonrag.paths import MODEL_REPOSITORY, artifacts_dir
from tritonrag.retrieval import builder, versions
from tritonrag.retrieval.index_cli import load_documents
from tritonrag.retrieval.passages import hits_from_json
from tritonrag.triton.server import TritonServer

pytestmark = pytest.mark.server

MOON_TEXT = "The Moon orbits the Earth about once every twenty-seven days, always showing the same face."
QUESTION = "How long does the Moon take to orbit the Earth?"


@pytest.fixture(scope="module")
def home(tmp_path_factory, docs_folder, embedder) -> Path:
    home = tmp_path_factory.mktemp("live") / "index"
    docs, inputs = load_documents([docs_folder], False)
    builder.build(home, docs, builder.Options(inputs=inputs), embedder)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory, home):
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(MODEL_REPOSITORY / "retriever", repo / "retriever")
    config = repo / "retriever" / "config.pbtxt"
    text = config.read_text().replace("${TRITONRAG_ARTIFACTS}/index", str(home))
    text = re.sub(r'(key: "reload_interval_s" value: \{ string_value: )"[^"]*"', r'\1"0.2"', text)
    config.write_text(text)
    instance = TritonServer.on_free_ports(
        model_repository=repo, log_path=artifacts_dir() / "logs" / "live-index-server.log"
    )
    with instance:
        yield instance


class Load:
    """Threads calling the retriever without pause; counts calls, keeps every error and the doc ids seen."""

    def __init__(self, url: str, embedding: np.ndarray, threads: int = 4) -> None:
        self.url, self.embedding = url, embedding
        self.calls, self.errors = 0, []
        self.latest: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        while not self._stop.is_set():
            try:
                doc_ids = search(client, self.embedding, QUESTION, 10)
                with self._lock:
                    self.calls += 1
                    self.latest = doc_ids
            except Exception as exc:  # noqa: BLE001 - reported by the test
                with self._lock:
                    self.errors.append(exc)
        client.close()

    def wait_until(self, condition, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if condition(self.latest):
                    return
            time.sleep(0.1)
        raise AssertionError(f"not seen within {timeout} s; last result {self.latest}")


def search(client, embedding: np.ndarray, text: str, k: int) -> list[str]:
    inputs = [
        grpcclient.InferInput("embedding", [1, embedding.shape[0]], "FP32"),
        grpcclient.InferInput("top_k", [1, 1], "INT32"),
        grpcclient.InferInput("query_text", [1, 1], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(embedding.reshape(1, -1).astype(np.float32))
    inputs[1].set_data_from_numpy(np.array([[k]], dtype=np.int32))
    inputs[2].set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    result = client.infer("retriever", inputs, client_timeout=30)
    raw = result.as_numpy("candidates").reshape(-1)[0]
    return [h.passage.doc_id for h in hits_from_json(raw.decode())]


def index_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tritonrag.retrieval.index_cli", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_add_and_delete_while_serving_fail_no_request(server, home, tmp_path, embedder):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "moon.txt").write_text(MOON_TEXT)
    first_version = versions.pointer(home)
    with Load(server.grpc_url, embedder.embed([QUESTION])[0]) as load:
        load.wait_until(lambda ids: bool(ids))
        assert "moon.txt" not in load.latest
        index_cli("add", "--docs", str(extra), "--out", str(home))
        load.wait_until(lambda ids: ids[:1] == ["moon.txt"])
        calls_after_add = load.calls
        index_cli("delete", "moon.txt", "--out", str(home))
        load.wait_until(lambda ids: bool(ids) and "moon.txt" not in ids)
        calls = load.calls
    assert not load.errors, load.errors[:3]
    assert calls > calls_after_add > 0
    assert versions.versions(home)[-1] != first_version and versions.pointer(home) == "v000003"
    log = server.log_path.read_text()
    assert "now serving v000002" in log and "now serving v000003" in log
