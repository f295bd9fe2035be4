"""The sampling_parameters JSON: defaults, parsing and every kind of bad value."""

import json

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.sampling import DEFAULT_MAX_TOKENS, SamplingParams


def test_absent_or_empty_means_defaults():
    for raw in (None, "", b"  "):
        params = SamplingParams.from_json(raw)
        assert params.max_tokens == DEFAULT_MAX_TOKENS and params.greedy


def test_parses_every_field():
    raw = json.dumps(
        {
            "max_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "seed": 3,
            "stop": "\n\n",
            "stop_token_ids": [2],
            "ignore_eos": True,
        }
    )
    params = SamplingParams.from_json(raw.encode())
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed) == (7, 0.5, 0.9, 40, 3)
    assert params.stop == ["\n\n"] and params.stop_token_ids == [2] and params.ignore_eos
    assert not params.greedy
    assert SamplingParams.from_json(params.to_json()) == params


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"max_tokens": -1}', "max_tokens must be >= 1"),
        ('{"max_tokens": 0}', "max_tokens must be >= 1"),
        ('{"max_tokens": 1.5}', "max_tokens must be an integer"),
        ('{"max_tokens": 100000}', "max_tokens must be <="),
        ('{"temperature": -0.1}', "temperature must be >= 0"),
        ('{"temperature": "hot"}', "temperature must be a number"),
        ('{"top_p": 0}', "top_p must be in (0, 1]"),
        ('{"top_p": 1.5}', "top_p must be in (0, 1]"),
        ('{"top_k": -2}', "top_k must be >= 0"),
        ('{"seed": -1}', "seed must be >= 0"),
        ('{"stop": [""]}', "stop must be"),
        ('{"stop_token_ids": "2"}', "stop_token_ids must be a list"),
        ('{"ignore_eos": "yes"}', "ignore_eos must be a boolean"),
        ('{"beam_width": 4}', "unknown field(s) ['beam_width']"),
    ],
)
def test_bad_values_are_named(raw, fragment):
    with pytest.raises(InvalidInput) as info:
        SamplingParams.from_json(raw)
    assert fragment in str(info.value)


def test_non_utf8_bytes():
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        SamplingParams.from_json(b"\xff\xfe{}")
