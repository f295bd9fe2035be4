"""The sampling_parameters JSON: defaults, vllm_backend-style string coercion, and every kind of bad value."""

import json

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.sampling import DEFAULT_MAX_TOKENS, MAX_LOGPROBS, SamplingParams, known_keys


def test_absent_or_empty_means_defaults():
    for raw in (None, "", b"  ", "{}"):
        params = SamplingParams.from_json(raw)
        assert params.max_tokens == DEFAULT_MAX_TOKENS and params.greedy
        assert params.min_tokens == 0 and params.logprobs is None and not params.has_penalties


def test_parses_every_field():
    raw = json.dumps(
        {
            "max_tokens": 7,
            "min_tokens": 2,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "min_p": 0.05,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.2,
            "seed": 3,
            "stop": "\n\n",
            "stop_token_ids": [2],
            "ignore_eos": True,
            "logprobs": 5,
            "skip_special_tokens": False,
        }
    )
    params = SamplingParams.from_json(raw.encode())
    assert (params.max_tokens, params.min_tokens, params.temperature, params.top_p, params.top_k) == (
        7,
        2,
        0.5,
        0.9,
        40,
    )
    assert (params.min_p, params.presence_penalty, params.frequency_penalty) == (0.05, 0.5, -0.5)
    assert (params.repetition_penalty, params.seed, params.logprobs) == (1.2, 3, 5)
    assert params.stop == ["\n\n"] and params.stop_token_ids == [2] and params.ignore_eos
    assert not params.skip_special_tokens and not params.greedy and params.has_penalties
    assert SamplingParams.from_json(params.to_json()) == params


def test_genai_perf_payload_with_strings():
    """genai-perf 0.0.16 (--backend vllm, deterministic output length) sends every number as a string."""
    params = SamplingParams.from_json('{"max_tokens": "32", "min_tokens": "32"}')
    assert (params.max_tokens, params.min_tokens) == (32, 32)


def test_strings_coerced_like_vllm_backend():
    raw = {
        "max_tokens": "32",
        "min_tokens": " 4 ",
        "temperature": "0.5",
        "top_p": "0.9",
        "top_k": "-1",  # vLLM's "disabled"
        "min_p": "0.1",
        "presence_penalty": "-1.5",
        "frequency_penalty": "1e-1",
        "repetition_penalty": "1.3",
        "seed": "42",
        "logprobs": "0",
        "ignore_eos": "true",
        "skip_special_tokens": "False",
        "stop_token_ids": "[2, 7]",  # Triton request parameters cannot carry lists
    }
    params = SamplingParams.from_dict(raw)
    assert (params.max_tokens, params.min_tokens, params.top_k, params.seed, params.logprobs) == (32, 4, 0, 42, 0)
    assert (params.temperature, params.top_p, params.min_p) == (0.5, 0.9, 0.1)
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (-1.5, 0.1, 1.3)
    assert params.ignore_eos is True and params.skip_special_tokens is False and params.stop_token_ids == [2, 7]
    assert all(isinstance(getattr(params, k), int) for k in ("max_tokens", "min_tokens", "top_k", "seed"))


def test_json_types_vllm_accepts():
    params = SamplingParams.from_dict({"max_tokens": 32.0, "ignore_eos": 1, "temperature": 1, "top_k": -1})
    assert params.max_tokens == 32 and isinstance(params.max_tokens, int)
    assert params.ignore_eos is True and params.temperature == 1.0 and params.top_k == 0


def test_nulls_mean_defaults_as_in_vllm_backend():
    params = SamplingParams.from_dict({"seed": None, "max_tokens": None, "logprobs": None, "prompt_logprobs": None})
    assert params.seed is None and params.max_tokens == DEFAULT_MAX_TOKENS and params.logprobs is None


def test_vllm_defaults_of_unimplemented_keys_are_accepted():
    raw = {
        "n": "1",
        "best_of": 1,
        "use_beam_search": "false",
        "detokenize": True,
        "include_stop_str_in_output": False,
        "spaces_between_special_tokens": "true",
        "prompt_logprobs": None,
    }
    assert SamplingParams.from_dict(raw) == SamplingParams()


def test_defaults_argument_is_overridden_by_the_request():
    assert SamplingParams.from_json('{"max_tokens": "5"}', max_tokens=9, temperature=0.7).max_tokens == 5
    assert SamplingParams.from_json(None, max_tokens=9).max_tokens == 9


def test_known_keys_lists_fields_and_vllm_defaults():
    keys = known_keys()
    assert {"max_tokens", "min_tokens", "logprobs", "repetition_penalty", "min_p", "n"} <= keys
    assert "exclude_input_in_output" not in keys and "stream" not in keys  # model inputs, not sampling


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"max_tokens": -1}', "max_tokens must be >= 1"),
        ('{"max_tokens": 0}', "max_tokens must be >= 1"),
        ('{"max_tokens": 1.5}', "max_tokens must be an integer"),
        ('{"max_tokens": "1.5"}', "max_tokens must be an integer"),
        ('{"max_tokens": "32 tokens"}', "max_tokens must be an integer"),
        ('{"max_tokens": true}', "max_tokens must be an integer"),
        ('{"max_tokens": 100000}', "max_tokens must be <="),
        ('{"max_tokens": "99999999999999999999999"}', "max_tokens must be <="),
        ('{"max_tokens": 1e400}', "max_tokens must be an integer"),
        ('{"min_tokens": -1}', "min_tokens must be >= 0"),
        ('{"min_tokens": 9, "max_tokens": 8}', "min_tokens must be <= max_tokens (8)"),
        ('{"temperature": -0.1}', "temperature must be >= 0"),
        ('{"temperature": "hot"}', "temperature must be a number"),
        ('{"temperature": NaN}', "temperature must be a finite number"),
        ('{"temperature": "nan"}', "temperature must be a finite number"),
        ('{"temperature": Infinity}', "temperature must be a finite number"),
        ('{"temperature": "-inf"}', "temperature must be a finite number"),
        ('{"temperature": [1]}', "temperature must be a number"),
        ('{"top_p": 0}', "top_p must be in (0, 1]"),
        ('{"top_p": 1.5}', "top_p must be in (0, 1]"),
        ('{"top_k": -2}', "top_k must be >= -1"),
        ('{"min_p": 1.5}', "min_p must be <= 1"),
        ('{"min_p": -0.1}', "min_p must be >= 0"),
        ('{"presence_penalty": 2.5}', "presence_penalty must be <= 2"),
        ('{"frequency_penalty": "-3"}', "frequency_penalty must be >= -2"),
        ('{"repetition_penalty": 0}', "repetition_penalty must be > 0"),
        ('{"repetition_penalty": "inf"}', "repetition_penalty must be a finite number"),
        ('{"seed": -1}', "seed must be >= 0"),
        ('{"seed": 9223372036854775808}', "seed must be <="),
        ('{"logprobs": -1}', "logprobs must be >= 0"),
        (json.dumps({"logprobs": MAX_LOGPROBS + 1}), f"logprobs must be <= {MAX_LOGPROBS}"),
        ('{"stop": [""]}', "stop must be"),
        ('{"stop": 3}', "stop must be"),
        ('{"stop_token_ids": "2"}', "stop_token_ids must be a list"),
        ('{"stop_token_ids": ["x"]}', "stop_token_ids[] must be an integer"),
        ('{"stop_token_ids": [-1]}', "stop_token_ids[] must be >= 0"),
        ('{"ignore_eos": "yes"}', "ignore_eos must be a boolean"),
        ('{"ignore_eos": 2}', "ignore_eos must be a boolean"),
        ('{"n": 2}', "n is not supported except 1"),
        ('{"best_of": "4"}', "best_of is not supported except 1"),
        ('{"use_beam_search": true}', "use_beam_search is not supported except false"),
        ('{"include_stop_str_in_output": "true"}', "include_stop_str_in_output is not supported except false"),
        ('{"prompt_logprobs": 1}', "prompt_logprobs is not supported"),
        ('{"beam_width": 4}', "unknown field(s) ['beam_width']"),
        ('{"lora_name": null}', "unknown field(s) ['lora_name']"),
    ],
)
def test_bad_values_are_named(raw, fragment):
    with pytest.raises(InvalidInput) as info:
        SamplingParams.from_json(raw)
    assert fragment in str(info.value)


def test_unknown_key_message_lists_the_known_ones():
    with pytest.raises(InvalidInput) as info:
        SamplingParams.from_json('{"exclude_input_in_output": true}')
    assert "unknown field(s) ['exclude_input_in_output']" in str(info.value)
    assert "'max_tokens'" in str(info.value) and "'logprobs'" in str(info.value)


def test_non_utf8_bytes():
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        SamplingParams.from_json(b"\xff\xfe{}")
