"""tritonrag_llm: a Python-based Triton backend serving the tritonrag LLM engine, decoupled.

A model selects it with `backend: "tritonrag_llm"`. This file only adapts Triton to the
library: `execute` parses each request and hands it to the engine's loop thread
(tritonrag.engine.serving), which streams text deltas back through the request's
response sender. Engine settings come from the model's config.pbtxt parameters.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.compile.runtime import pick_device
from tritonrag.engine.factory import build_service, choose_runtime
from tritonrag.engine.serving import Completion
from tritonrag.errors import InvalidInput
from tritonrag.sampling import SamplingParams
from tritonrag.triton import io as triton_io
from tritonrag.triton.generator_config import engine_config, warmup_enabled
from tritonrag.triton.versioning import version_parameters

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonSink:
    """Turns one request's deltas into Triton responses (streamed, or one at the end)."""

    def __init__(self, request, stream: bool, sources: bytes | None):
        self.request = request
        self.sender = request.get_response_sender()
        self.stream = stream
        self.sources = sources
        self.pending: list[str] = []
        self.lock = threading.Lock()

    def _outputs(self, text: str) -> list:
        outputs = [triton_io.bytes_tensor("text_output", text)]
        if self.sources is not None:
            outputs.append(triton_io.bytes_tensor("sources", self.sources))
            self.sources = b""  # sent once; later responses carry an empty placeholder
        return outputs

    def send_delta(self, text: str) -> None:
        if not self.stream:
            self.pending.append(text)
            return
        self.sender.send(pb_utils.InferenceResponse(output_tensors=self._outputs(text)))

    def finish(self, text: str, completion: Completion) -> None:
        if not self.stream:
            text = "".join(self.pending) + text
        outputs = self._outputs(text) + [
            triton_io.bytes_tensor("finish_reason", completion.finish_reason),
            pb_utils.Tensor("num_input_tokens", np.array([completion.num_prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor("num_output_tokens", np.array([completion.num_output_tokens], dtype=np.int32)),
            pb_utils.Tensor("num_cached_tokens", np.array([completion.num_cached_tokens], dtype=np.int32)),
        ]
        self.sender.send(pb_utils.InferenceResponse(output_tensors=outputs), flags=FINAL)

    def fail(self, error: Exception) -> None:
        self.sender.send(triton_io.error_response(error), flags=FINAL)

    def is_cancelled(self) -> bool:
        return self.request.is_cancelled()


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.set_model_transaction_policy({"decoupled": True})
        return auto_complete_model_config

    def initialize(self, args):
        if not pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"])):
            raise pb_utils.TritonModelException("tritonrag_llm needs `model_transaction_policy { decoupled: true }`")
        # This version's view: shared parameters overridden by its own `v<N>:<key>` ones.
        params, version = triton_io.model_parameters(args), args["model_version"]
        own = version_parameters(params, version)
        if "model_dir" not in own:
            raise pb_utils.TritonModelException("config.pbtxt parameter 'model_dir' is missing")
        try:
            device = pick_device(own.get("device", "auto"))
            config = engine_config(params, version, triton_io.repository_root(args), device=device)
        except ValueError as exc:  # an unknown or malformed parameter: refuse to load, saying which
            raise pb_utils.TritonModelException(f"generator version {version}: {exc}") from exc
        name = f"tritonrag_llm {args['model_name']} version {args['model_version']}"
        pb_utils.Logger.log_info(f"{name}: {config}")
        choice = choose_runtime(config)
        log = pb_utils.Logger.log_warn if choice.fell_back else pb_utils.Logger.log_info
        log(f"{name}: {choice.describe()}")
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.service = build_service(config, observer=TritonMetrics(labels), choice=choice)
        if warmup_enabled(params, version):
            self.service.warmup()

    def execute(self, requests):
        for request in requests:
            if pb_utils.get_input_tensor_by_name(request, "abort_request_id") is not None:
                self._abort(request)
                continue
            try:
                sink = TritonSink(
                    request,
                    stream=triton_io.bool_input(request, "stream", default=True),
                    sources=triton_io.bytes_input(request, "sources", required=False),
                )
            except Exception as exc:  # noqa: BLE001
                request.get_response_sender().send(triton_io.error_response(exc), flags=FINAL)
                continue
            try:
                prompt = triton_io.bytes_input(request, "text_input")
                try:
                    prompt_text = prompt.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidInput(f"text_input is not valid UTF-8 (bad byte at {exc.start})") from exc
                sampling = SamplingParams.from_json(
                    triton_io.bytes_input(request, "sampling_parameters", required=False)
                )
                self.service.submit(request.request_id() or "", prompt_text, sampling, sink)
            except Exception as exc:  # noqa: BLE001 - that request's error; the server keeps serving
                sink.fail(exc)
        return None

    def _abort(self, request) -> None:
        """A router's cancel of a request it started with BLS: end that request within a step."""
        sender = request.get_response_sender()
        try:
            abort_id = triton_io.bytes_input(request, "abort_request_id")
            self.service.abort(abort_id.decode("utf-8", errors="replace"))
        except Exception as exc:  # noqa: BLE001 - e.g. an empty id: that control request's error
            sender.send(triton_io.error_response(exc), flags=FINAL)
            return
        sender.send(flags=FINAL)

    def finalize(self):
        self.service.shutdown()


class TritonMetrics:
    """Engine metrics on Triton's /metrics endpoint, named after vLLM's where the meaning is the same."""

    LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]

    def __init__(self, labels: dict[str, str]):
        def family(name, kind, doc):
            return pb_utils.MetricFamily(name=name, description=doc, kind=kind)

        hist, gauge, counter = (
            pb_utils.MetricFamily.HISTOGRAM,
            pb_utils.MetricFamily.GAUGE,
            pb_utils.MetricFamily.COUNTER,
        )
        self._families = {
            "ttft": family("tritonrag_time_to_first_token_seconds", hist, "Time to first token"),
            "itl": family("tritonrag_inter_token_latency_seconds", hist, "Time between streamed tokens"),
            "e2e": family("tritonrag_e2e_request_latency_seconds", hist, "End-to-end request latency"),
            "running": family("tritonrag_num_requests_running", gauge, "Sequences in the running batch"),
            "waiting": family("tritonrag_num_requests_waiting", gauge, "Requests waiting to be scheduled"),
            "kv": family("tritonrag_kv_cache_usage_perc", gauge, "Fraction of KV cache blocks in use"),
            "hit": family("tritonrag_prefix_cache_hit_rate", gauge, "Prefix cache hits / queries, in tokens"),
            "preempt": family("tritonrag_num_preemptions_total", counter, "Sequences preempted"),
            "prompt": family("tritonrag_prompt_tokens_total", counter, "Prompt tokens processed"),
            "gen": family("tritonrag_generation_tokens_total", counter, "Tokens generated"),
            "done": family("tritonrag_request_success_total", counter, "Finished requests by reason"),
        }
        buckets = self.LATENCY_BUCKETS
        self.ttft = self._families["ttft"].Metric(labels=labels, buckets=buckets)
        self.itl = self._families["itl"].Metric(labels=labels, buckets=buckets)
        self.e2e = self._families["e2e"].Metric(labels=labels, buckets=buckets)
        self.gauges = {key: self._families[key].Metric(labels=labels) for key in ("running", "waiting", "kv", "hit")}
        self.counters = {key: self._families[key].Metric(labels=labels) for key in ("preempt", "prompt", "gen")}
        self.labels = labels
        self.done: dict[str, object] = {}
        self.last_totals = {"preempt": 0, "prompt": 0, "gen": 0}

    def on_first_token(self, ttft: float) -> None:
        self.ttft.observe(ttft)

    def on_inter_token(self, latency: float) -> None:
        self.itl.observe(latency)

    def on_finish(self, e2e: float, completion: Completion) -> None:
        self.e2e.observe(e2e)
        reason = completion.finish_reason
        if reason not in self.done:
            self.done[reason] = self._families["done"].Metric(labels={**self.labels, "finished_reason": reason})
        self.done[reason].increment(1)

    def on_step(self, engine) -> None:
        stats = engine.stats()
        self.gauges["running"].set(stats.num_running)
        self.gauges["waiting"].set(stats.num_waiting)
        self.gauges["kv"].set(stats.kv_usage)
        queries = stats.prefix_cache_queries
        self.gauges["hit"].set(stats.prefix_cache_hits / queries if queries else 0.0)
        totals = {
            "preempt": stats.num_preemptions,
            "prompt": stats.prompt_tokens_total,
            "gen": stats.generation_tokens_total,
        }
        for key, total in totals.items():
            if total > self.last_totals[key]:
                self.counters[key].increment(total - self.last_totals[key])
                self.last_totals[key] = total
