"""Hostile values are refused as InvalidInput naming the field, never another exception (INTERNAL)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tritonrag.defaults import MAX_PROMPT_BYTES, MAX_QUERY_BYTES
from tritonrag.errors import InvalidInput
from tritonrag.retrieval import stage_inputs
from tritonrag.retrieval.query import normalize_query
from tritonrag.sampling import MAX_JSON_BYTES, MAX_STOP_STRINGS, SamplingParams, load_json_object
from tritonrag.triton.canary import parse_pin
from tritonrag.triton.vllm_interface import read_request


@pytest.mark.parametrize("pin", ["²", "١٢", "9" * 5000, str(2**63), "-1", "0", "1.0", "x"])
def test_bad_version_pins_are_invalid_input(pin):
    with pytest.raises(InvalidInput, match="model_version"):
        parse_pin(pin.encode())


def test_good_pins():
    assert parse_pin(b" 2 ") == 2 and parse_pin(b"") is None and parse_pin(None) is None


@pytest.mark.parametrize(
    "raw, match",
    [
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ('{"max_tokens": ' + "9" * 5000 + "}", "cannot read"),
        ("{" + " " * MAX_JSON_BYTES + "}", "limit"),
        ("[1, 2]", "JSON object"),
        ("{nope", "not valid JSON"),
    ],
)
def test_hostile_json_is_invalid_input(raw, match):
    with pytest.raises(InvalidInput, match=match):
        load_json_object(raw, "sampling_parameters")
    with pytest.raises(InvalidInput, match="sampling_parameters"):
        SamplingParams.from_json(raw)


@pytest.mark.parametrize(
    "sampling, field",
    [
        ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, "stop"),
        ({"stop": "x" * 10_000}, "stop"),
        ({"stop_token_ids": list(range(1000))}, "stop_token_ids"),
        ({"top_k": 2**70}, "top_k"),
        ({"max_tokens": "9" * 5000}, "max_tokens"),
        ({"seed": 2**63}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "inf"}, "temperature"),
    ],
)
def test_sampling_limits(sampling, field):
    with pytest.raises(InvalidInput, match=field):
        SamplingParams.from_dict(sampling)


def test_prompt_and_query_byte_caps_come_before_decoding():
    reader = {"text_input": np.array([b"a" * (MAX_PROMPT_BYTES + 1)], dtype=np.object_)}.get
    with pytest.raises(InvalidInput, match="text_input is .* bytes"):
        read_request(reader)
    with pytest.raises(InvalidInput, match="query is .* bytes"):
        normalize_query(b"\xff" * (MAX_QUERY_BYTES + 1))
    deep = json.dumps({"max_tokens": 2})[:-1] + ', "x": ' + "[" * 3000 + "]" * 3000 + "}"
    with pytest.raises(InvalidInput, match="request parameters"):
        read_request({"text_input": np.array([b"hi"], dtype=np.object_)}.get, deep)


def test_stage_inputs_name_the_bad_input():
    with pytest.raises(InvalidInput, match="input_ids"):
        stage_inputs.token_row(np.array([[10**12]]), np.array([[1]]), 30522, 256)
    with pytest.raises(InvalidInput, match="attention_mask"):
        stage_inputs.token_row(np.array([[5, 6]]), np.array([[1, 7]]), 30522, 256)
    with pytest.raises(InvalidInput, match="input_ids"):
        stage_inputs.token_row(np.ones((1, 300), np.int64), np.ones((1, 300), np.int64), 30522, 256)
    ids, mask = stage_inputs.token_row(np.array([[101, 102]]), np.array([[1, 1]]), 30522, 256)
    assert ids.tolist() == [101, 102] and mask.tolist() == [1, 1]
    for raw in ("{not json", "[{}]", '[{"score": 1}]', "[" * 3000):
        with pytest.raises(InvalidInput, match="candidates"):
            stage_inputs.candidates(raw)
    with pytest.raises(InvalidInput, match="top_k"):
        stage_inputs.top_k(-5)
    with pytest.raises(InvalidInput, match="top_k"):
        stage_inputs.top_k(None)


def test_an_empty_prompt_is_refused_before_any_call():
    with pytest.raises(InvalidInput, match="text_input is empty"):
        read_request({"text_input": np.array([b""], dtype=np.object_)}.get)
