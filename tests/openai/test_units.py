"""The service's pieces that need no server: Triton error classes, sampling keys, logprobs, the mapping."""

from __future__ import annotations

import json

import pytest

from tritonrag.openai import triton_map
from tritonrag.openai.errors import OpenAIError, from_triton
from tritonrag.openai.generation import Answer, build_sampling, refuse_unsupported
from tritonrag.openai.protocol import ChatCompletionRequest, CompletionRequest
from tritonrag.openai.routers.chat import HANDLED
from tritonrag.openai.triton_map import Ask, ModelInterface, Piece


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("the generator's waiting queue is full (2 requests); retry later", 429),
        ("the generator is shutting down", 503),
        ("internal error: RuntimeError('boom')", 500),
        (
            "deadline exceeded: the request ran 300 s, its timeout (the generator's request_timeout_s), "
            "and was ended after 41 generated tokens",
            504,
        ),
        ("sampling_parameters.top_p must be in (0, 1], got 0", 400),
        ("query is empty or only whitespace", 400),
    ],
)
def test_triton_errors_map_to_openai_statuses(message, status):
    error = from_triton(message)
    assert error.status == status and message in error.message
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="llm", messages=[{"role": "user", "content": "hi"}], **fields)


def test_sampling_keys_map_one_to_one_and_default_temperature_is_openais():
    keys = build_sampling(chat(top_p=0.5, seed=3, stop="x", presence_penalty=0.1), 7, None)
    assert keys == {"temperature": 1.0, "top_p": 0.5, "seed": 3, "stop": "x", "presence_penalty": 0.1, "max_tokens": 7}
    extension = chat(top_k=5, min_p=0.1, ignore_eos=True)  # vLLM-style extras the engine knows
    assert build_sampling(extension, None, 2) | {} == {
        "temperature": 1.0,
        "top_k": 5,
        "min_p": 0.1,
        "ignore_eos": True,
        "logprobs": 2,
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"n": 3}, "n"), ({"tools": [{"type": "function"}]}, "tools"), ({"frobnicate": 1}, "frobnicate")],
)
def test_unsupported_fields_are_refused_by_name(fields, param):
    with pytest.raises(OpenAIError) as caught:
        refuse_unsupported(chat(**fields), HANDLED)
    assert caught.value.status == 400 and caught.value.param == param


def test_no_op_values_of_unsupported_fields_pass():
    refuse_unsupported(chat(n=1, tools=[], tool_choice="none", user="u", response_format={"type": "text"}), HANDLED)


def test_bad_values_are_400_naming_the_field():
    with pytest.raises(OpenAIError) as caught:
        build_sampling(chat(temperature=-1), None, None)
    assert caught.value.status == 400 and caught.value.param == "temperature"


def test_logprobs_json_of_vllm_backend_is_read_sampled_first():
    positions = [
        {
            "11": {"logprob": -0.5, "rank": 2, "decoded_token": "b"},
            "10": {"logprob": -0.1, "rank": 1, "decoded_token": "a"},
        }
    ]
    (position,) = triton_map.parse_logprobs(json.dumps(positions))
    assert (position.token, position.logprob) == ("b", -0.5)
    assert [t.token for t in position.top] == ["a", "b"]
    assert triton_map.parse_logprobs("null") is None


def test_generation_inputs_follow_the_models_declared_interface():
    old = ModelInterface("generator_router", frozenset({"text_input", "sampling_parameters", "stream"}), frozenset())
    new = ModelInterface(
        "llm",
        frozenset({"text_input", "sampling_parameters", "stream", "exclude_input_in_output", "return_finish_reason"}),
        frozenset({"finish_reason"}),
    )
    ask = Ask("hi", {"max_tokens": 2})
    assert [t.name() for t in triton_map.generation_inputs(old, ask)] == ["text_input", "sampling_parameters", "stream"]
    assert [t.name() for t in triton_map.generation_inputs(new, ask)][3:] == [
        "exclude_input_in_output",
        "return_finish_reason",
    ]
    rag = ModelInterface("rag", frozenset({"query", "top_k", "sampling_parameters"}), frozenset())
    assert [t.name() for t in triton_map.generation_inputs(rag, Ask("q", {}, passages=2))] == [
        "query",
        "sampling_parameters",
        "top_k",
    ]


def test_token_counts_sum_over_responses_either_way():
    totals_at_end, per_response = Answer(), Answer()
    for piece in (Piece("a"), Piece("b", "length", prompt_tokens=4, completion_tokens=2)):
        totals_at_end.add(piece)
    for piece in (Piece("a", None, 4, 1), Piece("b", "length", 4, 1)):
        per_response.add(piece)
    assert totals_at_end.usage() == per_response.usage()
    assert per_response.usage().total_tokens == 6 and per_response.openai_finish_reason == "length"
    assert Answer().usage() is None  # a model that reports no counts gets no usage, not a made-up one


def test_completion_prompt_must_be_one_string():
    assert CompletionRequest(model="llm", prompt=["one"]).prompt == ["one"]
