"""Runtime choice: the configured runtime when it can run, else a stated fallback."""

import pytest

from tritonrag.compile.runtime import pick_runtime


def test_torch_needs_nothing():
    choice = pick_runtime("torch", "cpu", {})
    assert (choice.name, choice.fell_back) == ("torch", False)
    assert choice.describe() == "runtime torch"


def test_onnxruntime_runs_when_its_graph_exists(tmp_path):
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"x")
    choice = pick_runtime("onnxruntime", "cpu", {"onnxruntime": graph})
    assert choice.name == "onnxruntime" and not choice.fell_back


def test_missing_graph_falls_back_to_torch_with_the_reason(tmp_path):
    missing = tmp_path / "model.onnx"
    choice = pick_runtime("onnxruntime", "cpu", {"onnxruntime": missing})
    assert choice.name == "torch" and choice.fell_back
    assert str(missing) in choice.describe() and "make onnx" in choice.describe()


def test_tensorrt_on_cpu_falls_back_one_step_at_a_time(tmp_path):
    graph, engine = tmp_path / "model.onnx", tmp_path / "model.engine"
    graph.write_bytes(b"x")
    engine.write_bytes(b"x")
    choice = pick_runtime("tensorrt", "cpu", {"onnxruntime": graph, "tensorrt": engine})
    assert choice.name == "onnxruntime"
    assert choice.reasons == ("a TensorRT engine needs a CUDA GPU",)


def test_onnxruntime_cuda_needs_the_cuda_provider(tmp_path):
    import onnxruntime

    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"x")
    choice = pick_runtime("onnxruntime", "cuda", {"onnxruntime": graph})
    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert choice.name == ("onnxruntime" if has_cuda else "torch")


def test_unknown_runtime_is_an_error():
    with pytest.raises(ValueError, match="runtime must be one of torch, onnxruntime, tensorrt"):
        pick_runtime("tvm", "cpu", {})
