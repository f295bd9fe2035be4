"""ONNX export of the embedder: checker, dynamic axes, parity with torch, meta.json, runtime fallback, CLI.

Tolerances (float32, CPU): embeddings 1e-5 and token states 1e-4 absolute (measured ~3e-7 and
~6e-6); retrieval on the 128 eval questions must give the same top-10 as the torch embedder
(the index was built with it).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import numpy as np
import pytest

from tritonrag.compile.onnx_export import (
    GRAPH_FILE,
    META_FILE,
    OnnxRuntime,
    check,
    file_sha256,
    max_abs_diff,
    source_fingerprint,
    stale_reason,
    up_to_date,
)
from tritonrag.paths import REPO_ROOT, index_dir
from tritonrag.retrieval.embedder import Embedder, default_model_dir
from tritonrag.retrieval.export import EMBEDDING_ATOL, TOKEN_STATES_ATOL, export_embedder

RAGGED = [
    "What is a generator expression?",
    "x",
    "How do I catch several exception types in one except clause and re-raise the last one? " * 2,
    "Decorators wrap a function; functools.wraps keeps its name and docstring. " * 40,  # cut at 256
    "sorted(iterable, key=len)",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The embedder graph exported once into a temporary onnx root: (root, meta)."""
    root = tmp_path_factory.mktemp("onnx")
    return root, export_embedder(default_model_dir(), root / "embedder")


@pytest.fixture(scope="module")
def graph(exported):
    return exported[0] / "embedder" / GRAPH_FILE


@pytest.fixture(scope="module")
def ort_embedder(graph):
    return Embedder(runtime="onnxruntime", onnx_path=graph)


def test_graph_passes_checker_with_named_dynamic_axes(graph):
    io = check(graph)
    assert io["inputs"] == [
        {"name": n, "shape": ["batch", "seq"], "dtype": "int64"} for n in ("input_ids", "attention_mask")
    ]
    assert io["outputs"] == [
        {"name": "embedding", "shape": ["batch", 384], "dtype": "float32"},
        {"name": "token_states", "shape": ["batch", "seq", 384], "dtype": "float32"},
    ]


def test_meta_json_describes_graph_source_and_parity(exported, graph):
    root, meta = exported
    assert json.loads((graph.parent / META_FILE).read_text()) == meta
    assert meta["name"] == "embedder" and meta["format"] == 1 and meta["opset"] == 18
    assert meta["sha256"] == file_sha256(graph) and meta["bytes"] == graph.stat().st_size
    assert meta["source"] == source_fingerprint(default_model_dir())
    assert "model.safetensors" in meta["source"]["files"] and "config.json" in meta["source"]["files"]
    assert [s["name"] for s in meta["outputs"]] == ["embedding", "token_states"]
    diffs, tolerance = meta["parity"]["max_abs_diff"], meta["parity"]["tolerance"]
    assert tolerance == {"embedding": EMBEDDING_ATOL, "token_states": TOKEN_STATES_ATOL}
    assert all(0 <= diffs[k] <= tolerance[k] for k in tolerance)
    assert up_to_date(graph.parent, default_model_dir())


def test_parity_with_torch_on_a_ragged_batch(embedder, ort_embedder):
    assert ort_embedder.runtime_choice.name == "onnxruntime" and not ort_embedder.runtime_choice.fell_back
    tokens = embedder.tokenize(RAGGED)
    lengths = tokens["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == len(RAGGED) and lengths.max() == 256
    want = embedder.embed_tokens(tokens["input_ids"], tokens["attention_mask"])
    got = ort_embedder.embed_tokens(tokens["input_ids"], tokens["attention_mask"])
    assert got.dtype == np.float32 and got.shape == (5, 384)
    assert max_abs_diff(got, want) <= EMBEDDING_ATOL
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    states = ort_embedder.token_states(tokens["input_ids"], tokens["attention_mask"])
    reference = embedder.token_states(tokens["input_ids"], tokens["attention_mask"])
    assert states.shape == reference.shape == (5, 256, 384)
    assert max_abs_diff(states, reference, tokens["attention_mask"]) <= TOKEN_STATES_ATOL
    assert (
        max_abs_diff(ort_embedder.embed(RAGGED, batch_size=2), embedder.embed(RAGGED, batch_size=2)) <= EMBEDDING_ATOL
    )


@pytest.mark.parametrize("batch,seq", [(1, 2), (3, 17), (33, 5), (2, 300)])
def test_batch_and_sequence_axes_are_dynamic(embedder, graph, batch, seq):
    """Shapes the export never saw (it traced batch 2): batch 1 and 33, one token pair to 300 tokens."""
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(1000, 20000, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = np.ones_like(ids)
    mask[0, seq // 2 + 1 :] = 0 if batch > 1 else 1
    out = OnnxRuntime(graph).run({"input_ids": ids, "attention_mask": mask}, ("embedding", "token_states"))
    assert out["embedding"].shape == (batch, 384) and out["token_states"].shape == (batch, seq, 384)
    assert max_abs_diff(out["embedding"], embedder.embed_tokens(ids, mask)) <= EMBEDDING_ATOL


def test_retrieval_on_the_eval_set_is_unchanged(embedder, ort_embedder):
    """The default index was built with torch embeddings: ORT query embeddings must retrieve the same."""
    if not (index_dir() / "faiss.index").exists():
        pytest.skip(f"no index at {index_dir()}: run `make setup` first")
    from tritonrag.retrieval.evaluate import load_questions
    from tritonrag.retrieval.retriever import Retriever

    texts = [q.question for q in load_questions()]
    torch_vectors, ort_vectors = embedder.embed(texts), ort_embedder.embed(texts)
    assert max_abs_diff(ort_vectors, torch_vectors) <= EMBEDDING_ATOL
    retriever = Retriever(index_dir(), use_gpu="never")
    for want, got in zip(retriever.search(torch_vectors, 10), retriever.search(ort_vectors, 10)):
        same_ids = [h.passage.id for h in got] == [h.passage.id for h in want]
        tie_swap = np.allclose([h.score for h in got], [h.score for h in want], atol=EMBEDDING_ATOL)
        assert same_ids or tie_swap


def test_missing_graph_falls_back_to_torch_and_logs_why(tmp_path, caplog):
    missing = tmp_path / "embedder" / GRAPH_FILE
    with caplog.at_level(logging.WARNING, logger="tritonrag.retrieval.embedder"):
        fallback = Embedder(runtime="onnxruntime", onnx_path=missing)
    assert fallback.runtime_choice.name == "torch" and fallback.runtime_choice.fell_back
    warning = next(r for r in caplog.records if r.name == "tritonrag.retrieval.embedder")
    assert warning.levelno == logging.WARNING
    assert str(missing) in warning.getMessage() and "configured onnxruntime" in warning.getMessage()
    assert fallback.embed(["still works"]).shape == (1, 384)


def _linked_copy(folder, source, config_change: dict | None = None):
    """folder with a symlink to each file of source; config.json rewritten with config_change when given."""
    folder.mkdir()
    for item in source.iterdir():
        if item.name != "config.json" or not config_change:
            (folder / item.name).symlink_to(item)
    if config_change:
        config = json.loads((source / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **config_change}))
    return folder


def test_graph_of_other_weights_is_not_served(tmp_path, graph, caplog):
    """Same files elsewhere: still fresh. A changed config: torch serves, with the reason logged."""
    assert stale_reason(graph.parent, _linked_copy(tmp_path / "same", default_model_dir())) is None
    other = _linked_copy(tmp_path / "changed", default_model_dir(), {"layer_norm_eps": 1e-6})
    assert "configs differ" in stale_reason(graph.parent, other)
    with caplog.at_level(logging.WARNING, logger="tritonrag.retrieval.embedder"):
        choice = Embedder(other, runtime="onnxruntime", onnx_path=graph).runtime_choice
    assert choice.name == "torch" and "configs differ" in choice.describe()
    assert any("configs differ" in r.getMessage() for r in caplog.records)


def test_tensorrt_request_falls_back_one_step_with_reasons(graph, caplog):
    with caplog.at_level(logging.WARNING, logger="tritonrag.retrieval.embedder"):
        choice = Embedder(runtime="tensorrt", onnx_path=graph).runtime_choice
    assert choice.name == "onnxruntime" and choice.requested == "tensorrt" and len(choice.reasons) == 1
    assert "configured tensorrt" in caplog.text


def test_unknown_runtime_is_an_error():
    with pytest.raises(ValueError, match="runtime must be one of"):
        Embedder(runtime="tvm")


@pytest.fixture(scope="module")
def export_script():
    spec = importlib.util.spec_from_file_location("tritonrag_export_onnx", REPO_ROOT / "build" / "export_onnx.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cli_skips_an_up_to_date_graph_and_has_no_default_reranker(exported, export_script, capsys, monkeypatch):
    root, meta = exported
    args = export_script.parse_args(["--out", str(root)])
    assert export_script.plan(args)[:2] == [("embedder", default_model_dir()), ("reranker", None)]
    args = export_script.parse_args(["--out", str(root), "--model", "all"])
    monkeypatch.delitem(export_script.EXPORTERS, "generator")  # its own tests cover it (a 2-minute export)
    outcomes = export_script.run(args)
    assert [(o.model, o.status.split(":")[0]) for o in outcomes] == [
        ("embedder", "up to date"),
        ("reranker", "skipped"),
    ]
    assert outcomes[0].meta == meta
    export_script.print_summary(outcomes, root)
    assert "up to date" in capsys.readouterr().out
    assert set(export_script.EXPORTERS) >= {"embedder", "reranker"}


def test_failed_export_leaves_the_previous_graph(tmp_path):
    from tritonrag.compile.onnx_export import staging

    out = tmp_path / "embedder"
    with staging(out) as folder:
        (folder / GRAPH_FILE).write_text("first")
    with pytest.raises(RuntimeError, match="beyond tolerance"), staging(out) as folder:
        (folder / GRAPH_FILE).write_text("second")
        from tritonrag.retrieval.export import _parity

        _parity({"embedding": (1e-3, EMBEDDING_ATOL)}, "a batch")
    assert (out / GRAPH_FILE).read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["embedder"]


def test_maxsim_reranker_ranks_alike_on_onnxruntime_token_states(embedder, ort_embedder):
    from tritonrag.retrieval.docstore import Passage
    from tritonrag.retrieval.reranker import Reranker
    from tritonrag.retrieval.retriever import Hit

    hits = [Hit(Passage(i, f"d{i}#0", f"d{i}", "", "test", text), 0.5) for i, text in enumerate(RAGGED)]
    want = Reranker.from_config("maxsim", embedder=embedder).rerank("How do decorators keep a docstring?", hits, 5)
    got = Reranker.from_config("maxsim", embedder=ort_embedder).rerank("How do decorators keep a docstring?", hits, 5)
    assert [h.passage.id for h in got] == [h.passage.id for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
