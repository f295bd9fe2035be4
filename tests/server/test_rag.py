"""The `rag` ensemble through a real tritonserver: streamed answers, sources, bad input."""

import json

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tritonrag.defaults import LLM_MODEL, MAX_QUERY_CHARS
from tritonrag_clients.streaming import StreamingClient, bytes_input, collect, rag_inputs

GREEDY_SHORT = {"max_tokens": 24, "temperature": 0}


@pytest.fixture()
def client(server):
    with StreamingClient(server.grpc_url) as c:
        yield c


def test_streams_answer_token_by_token_with_sources(client):
    events = list(client.stream("rag", rag_inputs("How do I catch an exception?", sampling=GREEDY_SHORT)))
    text_events = [e for e in events if e.text]
    assert len(text_events) > 3, "the answer should arrive in several streamed deltas"
    assert events[-1].final and all(e.error is None for e in events)
    sources = next(e.sources for e in events if e.sources)
    assert events[0].sources == sources, "sources come with the first response"
    assert 1 <= len(sources) <= 3
    for source in sources:
        assert set(source) == {"id", "title", "score"} and source["title"]
    answer = "".join(e.text for e in events)
    assert answer.strip()


def test_top_k_sets_number_of_sources(client):
    _, sources, _ = collect(
        client.stream("rag", rag_inputs("What does the with statement do?", top_k=2, sampling=GREEDY_SHORT))
    )
    assert len(sources) == 2


def test_retrieval_finds_the_relevant_topic(client):
    _, sources, _ = collect(
        client.stream(
            "rag", rag_inputs("How does the try statement handle exceptions?", top_k=5, sampling={"max_tokens": 1})
        )
    )
    assert any("try" in s["id"] or "exception" in s["id"].lower() or "try" in s["title"].lower() for s in sources), (
        sources
    )


def test_caching_question_cites_functools(client):
    """Issue 16's acceptance question: the standard library corpus answers it from functools."""
    _, sources, _ = collect(
        client.stream("rag", rag_inputs("How do I cache the results of a function?", sampling={"max_tokens": 1}))
    )
    assert any(s["id"].startswith(("functools.lru_cache#", "functools.cache#")) for s in sources), sources


def test_same_greedy_request_gives_same_answer(client):
    first, _, _ = collect(client.stream("rag", rag_inputs("What is a generator?", sampling=GREEDY_SHORT)))
    second, _, _ = collect(client.stream("rag", rag_inputs("What is a generator?", sampling=GREEDY_SHORT)))
    assert first == second and first


BAD_RAG_INPUTS = [
    ("empty", rag_inputs(""), "query is empty"),
    ("whitespace", rag_inputs("   \n\t"), "query is empty"),
    ("non-utf8", rag_inputs(b"caf\xe9?"), "not valid UTF-8"),
    ("too long", rag_inputs("x" * (MAX_QUERY_CHARS + 1)), f"limit is {MAX_QUERY_CHARS}"),
    ("bad json", rag_inputs("hi", sampling="{max_tokens: 3"), "not valid JSON"),
    ("negative max_tokens", rag_inputs("hi", sampling={"max_tokens": -4}), "max_tokens must be >= 1"),
    ("negative temperature", rag_inputs("hi", sampling={"temperature": -1}), "temperature must be >= 0"),
    ("top_p zero", rag_inputs("hi", sampling={"top_p": 0}), "top_p must be in (0, 1]"),
    ("top_p above one", rag_inputs("hi", sampling={"top_p": 1.2}), "top_p must be in (0, 1]"),
    ("top_k zero", rag_inputs("hi", top_k=0), "top_k must be between"),
]


@pytest.mark.parametrize("name, inputs, fragment", BAD_RAG_INPUTS, ids=[b[0] for b in BAD_RAG_INPUTS])
def test_bad_input_gets_clear_error_over_grpc_stream(client, name, inputs, fragment):
    """Triton's gRPC stream carries an error's message but not its code (ModelStreamInferResponse
    has only `error_message`), so the stream test checks the message; the code is checked over
    plain gRPC below and over HTTP (400)."""
    events = list(client.stream("rag", inputs))
    error = events[-1].error
    assert error is not None, f"{name}: expected an error"
    assert fragment in error.message(), error.message()


@pytest.mark.parametrize("name, inputs, fragment", BAD_RAG_INPUTS, ids=[b[0] for b in BAD_RAG_INPUTS])
def test_bad_input_is_invalid_arg_over_grpc(server, name, inputs, fragment):
    """The same inputs sent to the validating stage with a unary gRPC call: status INVALID_ARGUMENT."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("preprocess", inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    assert fragment in info.value.message()


def test_wrong_type_and_shape_rejected_over_grpc(client):
    wrong_type = grpcclient.InferInput("query", [1], "INT32")
    wrong_type.set_data_from_numpy(np.array([7], dtype=np.int32))
    error = list(client.stream("rag", [wrong_type]))[-1].error
    assert error is not None and "data-type" in error.message(), error
    wrong_shape = grpcclient.InferInput("query", [2], "BYTES")
    wrong_shape.set_data_from_numpy(np.array([b"a", b"b"], dtype=np.object_))
    error = list(client.stream("rag", [wrong_shape]))[-1].error
    assert error is not None and "shape" in error.message(), error


HTTP_BAD = [
    ({"query": ""}, "query is empty"),
    ({"query": "hi", "sampling_parameters": "{oops"}, "not valid JSON"),
    ({"query": "hi", "sampling_parameters": json.dumps({"max_tokens": -1})}, "max_tokens must be >= 1"),
    ({"query": "hi", "sampling_parameters": json.dumps({"top_p": 2})}, "top_p must be in (0, 1]"),
    ({"query": "hi", "top_k": 99}, "top_k must be between"),
]


@pytest.mark.parametrize("body, fragment", HTTP_BAD)
def test_bad_input_gets_400_over_http(server, body, fragment):
    response = requests.post(f"http://{server.http_url}/v2/models/rag/generate", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_http_generate_answers(server):
    body = {"query": "What is a list comprehension?", "sampling_parameters": json.dumps({"max_tokens": 8})}
    response = requests.post(
        f"http://{server.http_url}/v2/models/rag/generate_stream", json=body, timeout=120, stream=True
    )
    assert response.status_code == 200
    chunks = [json.loads(line[len(b"data: ") :]) for line in response.iter_lines() if line.startswith(b"data: ")]
    assert any(chunk.get("text_output") for chunk in chunks)


def test_server_keeps_serving_after_errors(client):
    for _, inputs, _ in BAD_RAG_INPUTS:
        list(client.stream("rag", inputs))
    text, sources, last = collect(
        client.stream("rag", rag_inputs("How do I define a function?", sampling=GREEDY_SHORT))
    )
    assert text and sources and last.final


def test_llm_rejects_bad_text_input(client):
    error = list(client.stream(LLM_MODEL, [bytes_input("text_input", b"\xff\xfe")]))[-1].error
    assert isinstance(error, InferenceServerException) and "UTF-8" in error.message()


def test_compiled_stages_run_on_their_configured_runtime(server):
    """make setup exports the embedder's and the generator step's ONNX graphs, so the embedder and
    generator version 2 (the canary) serve on ONNX Runtime, not a fallback; version 1 on torch."""
    log = server.log_path.read_text(errors="replace")
    assert '"embedder: runtime onnxruntime"' in log, "embedder did not report running on onnxruntime"
    assert "embedder: runtime torch (configured" not in log
    assert "tritonrag_llm generator version 2: runtime onnxruntime" in log
    assert "tritonrag_llm generator version 1: runtime torch" in log
