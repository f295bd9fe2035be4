"""vllm_backend's interface, without a server: the configs declare it, requests parse and responses build by its rules.

The same rules run through a real tritonserver in tests/server/test_llm.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tritonrag import metrics
from tritonrag.defaults import GENERATOR_MODEL, LLM_MODEL
from tritonrag.engine.serving import Completion
from tritonrag.errors import InvalidInput
from tritonrag.paths import MODEL_REPOSITORY
from tritonrag.triton import vllm_interface as llm
from tritonrag.triton.engine_metrics import EngineMetrics
from tritonrag.triton.metric_outbox import MetricOutbox


def load(name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((MODEL_REPOSITORY / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def declared(tensors) -> list[tuple]:
    return [
        (t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), getattr(t, "optional", False))
        for t in tensors
    ]


def specs(tensors, outputs: bool = False) -> list[tuple]:
    return [(t.name, t.data_type, t.dims, False if outputs else t.optional) for t in tensors]


@pytest.mark.parametrize(
    "model, inputs, outputs",
    [(LLM_MODEL, llm.LLM_INPUTS, llm.LLM_OUTPUTS), (GENERATOR_MODEL, llm.GENERATOR_INPUTS, llm.GENERATOR_OUTPUTS)],
)
def test_configs_declare_the_interface(model, inputs, outputs):
    config = load(model)
    assert declared(config.input) == specs(inputs)
    assert declared(config.output) == specs(outputs, outputs=True)
    assert config.model_transaction_policy.decoupled


def test_interface_is_vllm_backends():
    """Names, types and shapes as vllm_backend's auto_complete_config declares them."""
    assert specs(llm.INPUTS)[:3] == [
        ("text_input", "TYPE_STRING", (1,), False),
        ("stream", "TYPE_BOOL", (1,), True),
        ("sampling_parameters", "TYPE_STRING", (1,), True),
    ]
    assert {t.name for t in llm.INPUTS} >= {
        "exclude_input_in_output",
        "return_finish_reason",
        "return_cumulative_logprob",
        "return_logprobs",
        "return_num_input_tokens",
        "return_num_output_tokens",
    }
    assert specs(llm.OUTPUTS, outputs=True) == [
        ("text_output", "TYPE_STRING", (-1,), False),
        ("finish_reason", "TYPE_STRING", (-1,), False),
        ("cumulative_logprob", "TYPE_FP32", (-1,), False),
        ("logprobs", "TYPE_STRING", (-1,), False),
        ("num_input_tokens", "TYPE_UINT32", (1,), False),
        ("num_output_tokens", "TYPE_UINT32", (-1,), False),
    ]


def reader(**tensors):
    arrays = {}
    for name, value in tensors.items():
        if isinstance(value, bool):
            arrays[name] = np.array([value])
        else:
            arrays[name] = np.array([value.encode() if isinstance(value, str) else value], dtype=np.object_)
    return arrays.get


def test_defaults_are_vllm_backends():
    request = llm.read_request(reader(text_input="Hi"))
    assert request == llm.LlmRequest("Hi", {}, stream=False, prepend_input=True, returns=frozenset())
    streamed = llm.read_request(reader(text_input="Hi", stream=True))
    assert streamed.stream and not streamed.prepend_input


def test_exclude_input_in_output():
    assert not llm.read_request(reader(text_input="Hi", exclude_input_in_output=True)).prepend_input
    assert llm.read_request(reader(text_input="Hi", exclude_input_in_output=False)).prepend_input
    with pytest.raises(InvalidInput, match="not allowed when streaming"):
        llm.read_request(reader(text_input="Hi", stream=True, exclude_input_in_output=False))


def test_return_flags_choose_outputs():
    request = llm.read_request(reader(text_input="Hi", return_finish_reason=True, return_logprobs=False))
    assert request.returns == {"finish_reason"}


def test_request_parameters_carry_sampling_keys_and_flags():
    params = json.dumps({"max_tokens": "8", "temperature": 0, "stream": "true", "return_num_output_tokens": 1})
    request = llm.read_request(reader(text_input="Hi"), params)
    assert request.sampling == {"max_tokens": "8", "temperature": 0}
    assert request.stream and request.returns == {"num_output_tokens"}


def test_tensors_win_over_parameters():
    params = {"max_tokens": 8, "top_k": 5, "stream": True}
    request = llm.read_request(reader(text_input="Hi", stream=False, sampling_parameters='{"max_tokens": "3"}'), params)
    assert request.sampling == {"max_tokens": "3", "top_k": 5} and not request.stream


@pytest.mark.parametrize(
    "tensors, params, fragment",
    [
        ({}, None, "'text_input' is required"),
        ({"text_input": b"caf\xe9"}, None, "not valid UTF-8"),
        ({"text_input": "Hi"}, {"beam_width": 2}, "unknown request parameter(s) ['beam_width']"),
        ({"text_input": "Hi"}, {"stream": "yes"}, "parameter 'stream' must be a boolean"),
        ({"text_input": "Hi"}, "{not json", "request parameters are not valid JSON"),
        ({"text_input": "Hi", "sampling_parameters": "[1]"}, None, "must be a JSON object"),
        ({"text_input": "Hi", "sampling_parameters": "{max_tokens"}, None, "not valid JSON"),
    ],
)
def test_bad_requests_name_the_problem(tensors, params, fragment):
    with pytest.raises(InvalidInput) as error:
        llm.read_request(reader(**tensors), params)
    assert fragment in str(error.value)


def test_timeout_parameter_is_the_deadline_not_a_sampling_key():
    """HTTP generate passes `parameters.timeout` as a request parameter (Triton 2.51 does not make it the
    request's timeout): it is read as microseconds, kept out of sampling, and Triton's own timeout wins."""
    request = llm.read_request(reader(text_input="Hi"), {"timeout": 2_500_000, "max_tokens": 4})
    assert request.timeout_us == 2_500_000 and request.sampling == {"max_tokens": 4}
    assert request.client_timeout_us(0) == 2_500_000  # request.timeout() is 0 when the client set none
    assert request.client_timeout_us(1_000) == 1_000
    assert llm.read_request(reader(text_input="Hi"), {"timeout": " 7 "}).timeout_us == 7
    assert llm.read_request(reader(text_input="Hi")).client_timeout_us(0) == 0


@pytest.mark.parametrize("value", [-1, 1.5, True, "soon", "1e6", "1" * 5000, 2**63, "١٢"])
def test_bad_timeout_parameters_are_refused(value):
    with pytest.raises(InvalidInput) as error:
        llm.read_request(reader(text_input="Hi"), {"timeout": value})
    assert "parameter 'timeout' must be whole microseconds" in str(error.value)
    assert len(str(error.value)) < 300  # a 5,000-character value is not echoed whole


def test_to_inputs_round_trips():
    request = llm.LlmRequest(
        "Hé", {"max_tokens": "4"}, stream=True, prepend_input=False, returns=frozenset({"logprobs"})
    )
    tensors = request.to_inputs()
    assert set(tensors) == {t.name for t in (*llm.INPUTS, *llm.OWN_INPUTS)}
    for spec in (*llm.INPUTS, *llm.OWN_INPUTS):
        assert tensors[spec.name].dtype == llm.NUMPY_TYPES[spec.data_type], spec.name
    assert llm.read_request(tensors.get) == request


def test_engine_computes_logprobs_for_a_cumulative_sum_or_streamed_counts():
    plain = llm.LlmRequest("Hi", {"max_tokens": 2})
    assert plain.engine_sampling() == {"max_tokens": 2}
    cumulative = llm.LlmRequest("Hi", {}, returns=frozenset({"cumulative_logprob"}))
    assert cumulative.engine_sampling() == {"logprobs": 0}
    counted = llm.LlmRequest("Hi", {}, stream=True, prepend_input=False, returns=frozenset({"num_output_tokens"}))
    assert counted.engine_sampling() == {"logprobs": 0}
    asked = llm.LlmRequest("Hi", {"logprobs": 3}, returns=frozenset({"cumulative_logprob"}))
    assert asked.engine_sampling() == {"logprobs": 3}


@dataclass(frozen=True)
class Entry:
    logprob: float
    rank: int
    decoded_token: str


ALL = frozenset(llm.RETURNABLE) | frozenset(llm.OWN_RETURNABLE)


def test_streamed_responses_report_per_response_values():
    builder = llm.ResponseBuilder(llm.LlmRequest("Hi", {"logprobs": 1}, stream=True, prepend_input=False, returns=ALL))
    first = builder.outputs(
        llm.Piece("A b", 2, [{5: Entry(-0.5, 1, "A")}, {7: Entry(-1.0, 2, " b"), 8: Entry(-0.25, 1, " c")}], None, 3)
    )
    assert first["text_output"].tolist() == [b"A b"]
    assert first["finish_reason"].tolist() == [b"None"]  # vllm_backend's str(None) until the end
    assert first["cumulative_logprob"].tolist() == [-1.5] and first["num_output_tokens"].tolist() == [2]
    assert json.loads(first["logprobs"][0]) == [
        {"5": {"logprob": -0.5, "rank": 1, "decoded_token": "A"}},
        {
            "7": {"logprob": -1.0, "rank": 2, "decoded_token": " b"},
            "8": {"logprob": -0.25, "rank": 1, "decoded_token": " c"},
        },
    ]
    assert "num_cached_tokens" not in first  # known at the end only
    last = builder.outputs(llm.Piece("!", 1, [{9: Entry(-2.0, 1, "!")}], "length", 3, num_cached_tokens=0))
    assert last["finish_reason"].tolist() == [b"length"] and last["cumulative_logprob"].tolist() == [-3.5]
    for name, array in last.items():
        spec = next(t for t in llm.GENERATOR_OUTPUTS if t.name == name)
        assert array.dtype == llm.NUMPY_TYPES[spec.data_type] and array.ndim == 1, name


def test_outputs_only_when_asked_and_logprobs_null_unless_sampling_asked():
    builder = llm.ResponseBuilder(llm.LlmRequest("Hi", {}))
    assert set(builder.outputs(llm.Piece("x", 1, None, "stop"), prefix="Hi")) == {"text_output"}
    assert builder.outputs(llm.Piece("x", 1, None, "stop"), prefix="Hi")["text_output"].tolist() == [b"Hix"]
    forced = llm.ResponseBuilder(llm.LlmRequest("Hi", {}, returns=frozenset({"logprobs", "cumulative_logprob"})))
    out = forced.outputs(llm.Piece("x", 1, [{1: Entry(-0.1, 1, "x")}], "stop"))
    assert out["logprobs"].tolist() == [b"null"] and math.isclose(out["cumulative_logprob"][0], -0.1, rel_tol=1e-6)


class Recorder:
    """A stand-in for pb_utils.MetricFamily: records what each metric was told."""

    families: dict[str, Recorder] = {}

    def __init__(self, family):
        self.family, self.samples = family, {}
        Recorder.families[family.name] = self

    def Metric(self, labels, buckets=None):  # noqa: N802 - pb_utils' name
        recorder = self

        class Metric:
            def observe(self, value):
                recorder.samples.setdefault(tuple(sorted(labels.items())), []).append(value)

            increment = set = observe

        return Metric()


@dataclass
class Stats:
    num_running: int = 2
    num_waiting: int = 1
    kv_usage: float = 0.25
    prefix_cache_hits: int = 0
    prefix_cache_queries: int = 0
    num_preemptions: int = 0
    prompt_tokens_total: int = 10
    generation_tokens_total: int = 3
    num_steps: int = 4
    num_mixed_steps: int = 1
    num_partial_prefill_chunks: int = 2


def test_engine_metrics_feed_ours_and_vllms_names():
    Recorder.families = {}
    observer = EngineMetrics({"model": "generator", "version": "1"}, Recorder, MetricOutbox(thread=False))
    assert set(Recorder.families) == {f.name for f in (*metrics.ENGINE_FAMILIES, *metrics.VLLM_FAMILIES)}
    engine = type("Engine", (), {"stats": lambda self: Stats()})()
    observer.on_first_token(0.2)
    observer.on_step(engine)
    observer.on_finish(1.5, Completion("length", 10, 0, 3))
    assert all(not recorder.samples for recorder in Recorder.families.values())  # queued, not sent yet
    observer.outbox.flush()
    labels = (("model", "generator"), ("version", "1"))
    got = {name: recorder.samples for name, recorder in Recorder.families.items()}
    assert got["vllm:time_to_first_token_seconds"][labels] == [0.2] == got[metrics.TTFT.name][labels]
    assert got["vllm:prompt_tokens_total"][labels] == [10] and got["vllm:generation_tokens_total"][labels] == [3]
    assert got["vllm:iteration_tokens_total"][labels] == [13]
    assert got[metrics.ENGINE_STEPS.name][labels] == [4] and got[metrics.MIXED_STEPS.name][labels] == [1]
    assert got[metrics.PARTIAL_PREFILL_CHUNKS.name][labels] == [2]
    assert got["vllm:num_requests_running"][labels] == [2] and got["vllm:kv_cache_usage_perc"][labels] == [0.25]
    assert got["vllm:gpu_cache_usage_perc"][labels] == [0.25]
    assert got["vllm:request_generation_tokens"][labels] == [3]
    assert got["vllm:request_success_total"][(("finished_reason", "length"), *labels)] == [1]
    observer.on_timeout()  # a deadline: counted apart, never as a finish reason
    observer.outbox.flush()
    assert got[metrics.REQUEST_TIMEOUTS.name][labels] == [1]
    assert set(got["vllm:request_success_total"]) == {(("finished_reason", "length"), *labels)}
    observer.on_step(engine)  # no growth: counters untouched
    observer.outbox.flush()
    assert got["vllm:prompt_tokens_total"][labels] == [10]
