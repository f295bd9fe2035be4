"""Triton adapter for the public LLM, `llm` (logic: tritonrag.triton.canary, tritonrag.triton.vllm_interface).

It speaks vllm_backend's interface and sends each request to a generator version: the stable
one unless the canary split or a pin says otherwise, and streams that version's responses back.
`execute` reads each request (request parameters folded into the generator's input
tensors, every flag explicit, since a BLS request carries tensors), routes it on Triton's
thread (so a seeded router draws in arrival order) and hands it to a worker that calls the chosen generator version with a decoupled
BLS request and forwards every response, adding `served_version`. Mirrors to the shadow
version run on their own few workers, their output drained and dropped. Routing counters
and the split in force are Triton custom metrics.

A caller that cancels has its stream ended at once. This Python backend (Triton 2.51) has
no way to cancel a BLS request it started, so the router names each generator request
uniquely and, on a cancel, sends the generator an abort for that name (its optional
`abort_request_id` input): the engine drops the sequence within a step and frees its
KV blocks, and the router drains what is left of the stream.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.triton import io as triton_io
from tritonrag.triton.canary import RoutingConfig, WeightsFile, check_pin, choose, parse_pin
from tritonrag.triton.vllm_interface import SOURCES_INPUT, read_request

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                f"{args['model_name']} needs `model_transaction_policy {{ decoupled: true }}`"
            )
        params = triton_io.model_parameters(args)
        self.target = params.get("target_model", "generator")
        default = RoutingConfig.from_parameters(params)  # the split while no weights file exists
        self.weights = WeightsFile(triton_io.artifact_parameter(args, "weights_file"), default)
        seed = params.get("random_seed", "").strip()
        self.rng = random.Random(int(seed) if seed else None)
        self.outputs = [o["name"] for o in config["output"] if o["name"] != "served_version"]
        self.streams = ThreadPoolExecutor(int(params.get("max_streams", "64")), thread_name_prefix="route")
        shadow_slots = int(params.get("max_shadow_streams", "8"))
        self.shadows = ThreadPoolExecutor(shadow_slots, thread_name_prefix="shadow")
        self.shadow_slots = threading.BoundedSemaphore(shadow_slots)
        self.metrics = RouterMetrics(self.target)
        self.metrics.show_split(self.weights.current())
        self.stopped = threading.Event()
        self.watcher = threading.Thread(target=self._watch_weights, name="weights", daemon=True)
        self.watcher.start()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = _generator_inputs(request)
                route = choose(
                    self.weights.current(),
                    triton_io.bytes_input(request, "routing_key", required=False),
                    self._pin(request),
                    self.rng,
                )
            except Exception as exc:  # noqa: BLE001 - that request's error; the server keeps serving
                self.metrics.count("rejected")
                sender.send(triton_io.error_response(exc), flags=FINAL)
                continue
            # Unique per generator request, so that an abort names exactly this one.
            request_id = f"{request.request_id() or 'route'}@{uuid.uuid4().hex[:12]}"
            self.metrics.count("requests", route.version, route.mode)
            self.streams.submit(self._forward, request, sender, inputs, request_id, route.version, route.mode)
            if route.shadow is not None:
                self._mirror(inputs, request_id + "-shadow", route.shadow)
        return None

    def _pin(self, request) -> int | None:
        pin = parse_pin(triton_io.bytes_input(request, "model_version", required=False))
        if pin is None:
            return None
        ready = lambda v: pb_utils.is_model_ready(model_name=self.target, model_version=str(v))  # noqa: E731
        return check_pin(pin, ready, self.weights.current(), self.target)

    def _child(self, inputs, request_id: str, version: int):
        return pb_utils.InferenceRequest(
            model_name=self.target,
            model_version=version,
            inputs=inputs,
            requested_output_names=self.outputs,
            request_id=request_id,
        )

    def _forward(self, request, sender, inputs, request_id: str, version: int, mode: str) -> None:
        """Stream the chosen version's responses to the caller; its error ends the stream."""
        served = pb_utils.Tensor("served_version", np.array([version], dtype=np.int32))
        cancelled = False
        try:
            for response in self._child(inputs, request_id, version).exec(decoupled=True):
                if response.has_error():
                    self.metrics.count("failures", version, mode)
                    error = response.error()
                    sender.send(
                        pb_utils.InferenceResponse(error=pb_utils.TritonError(error.message(), error.code())),
                        flags=FINAL,
                    )
                    return
                if cancelled or not response.output_tensors():
                    continue
                if request.is_cancelled():
                    # A BLS request cannot be cancelled from here: end the caller's stream now,
                    # ask the generator to abort this request, and drain what it still sends.
                    cancelled = True
                    sender.send(flags=FINAL)
                    self._abort(request_id, version)
                    continue
                sender.send(pb_utils.InferenceResponse(output_tensors=response.output_tensors() + [served]))
            if not cancelled:
                sender.send(flags=FINAL)
        except Exception as exc:  # noqa: BLE001
            self.metrics.count("failures", version, mode)
            if not cancelled:
                sender.send(triton_io.error_response(exc), flags=FINAL)

    def _abort(self, request_id: str, version: int) -> None:
        """Tell the generator version to drop `request_id` (frees its KV blocks within a step)."""
        inputs = [
            pb_utils.Tensor("text_input", np.array([b""], dtype=np.object_)),
            pb_utils.Tensor("abort_request_id", np.array([request_id.encode()], dtype=np.object_)),
        ]
        try:
            for response in self._child(inputs, request_id + "-abort", version).exec(decoupled=True):
                if response.has_error():
                    pb_utils.Logger.log_warn(f"llm: abort of {request_id}: {response.error().message()}")
        except Exception as exc:  # noqa: BLE001 - the request then runs to its end, drained
            pb_utils.Logger.log_warn(f"llm: abort of {request_id} failed: {exc}")
        self.metrics.count("aborted", version, "cancel")

    def _mirror(self, inputs, request_id: str, version: int) -> None:
        if not self.shadow_slots.acquire(blocking=False):
            self.metrics.count("shadow_skipped", version, "shadow")
            return
        self.metrics.count("requests", version, "shadow")
        self.shadows.submit(self._shadow, inputs, request_id, version)

    def _shadow(self, inputs, request_id: str, version: int) -> None:
        """Run the mirror to its end and drop its output; the generator records its metrics."""
        try:
            for response in self._child(inputs, request_id, version).exec(decoupled=True):
                if response.has_error():
                    self.metrics.count("failures", version, "shadow")
        except Exception:  # noqa: BLE001
            self.metrics.count("failures", version, "shadow")
        finally:
            self.shadow_slots.release()

    def _watch_weights(self) -> None:
        """Pick up a changed weights file even when idle: the gauges show the split in force."""
        shown, reported = None, None
        while not self.stopped.wait(1.0):
            config = self.weights.current()
            self.metrics.show_split(config)
            if config != shown:
                shown = config
                pb_utils.Logger.log_info(f"llm: split is {config.describe()}")
            if self.weights.error != reported:
                reported = self.weights.error
                if reported:
                    pb_utils.Logger.log_error(f"llm: {reported}; keeping {config.describe()}")

    def finalize(self):
        self.stopped.set()
        self.streams.shutdown(wait=True)  # in-flight streams finish before the model goes away
        self.shadows.shutdown(wait=True)


def _generator_inputs(request) -> list:
    """The generator's inputs as fresh tensors owned by this process (they outlive execute).

    vllm_backend's inputs with request parameters folded in and every flag explicit (a
    bad one is INVALID_ARG here), and the ensemble's sources passed through.
    """
    llm_request = read_request(triton_io.input_reader(request), request.parameters())
    tensors = [pb_utils.Tensor(name, array) for name, array in llm_request.to_inputs().items()]
    sources = pb_utils.get_input_tensor_by_name(request, SOURCES_INPUT.name)
    if sources is not None:
        tensors.append(pb_utils.Tensor(SOURCES_INPUT.name, np.array(sources.as_numpy(), copy=True)))
    return tensors


class RouterMetrics:
    """Routing counters and the split in force, on Triton's /metrics endpoint."""

    def __init__(self, target: str):
        def family(name, kind, doc):
            return pb_utils.MetricFamily(name=name, description=doc, kind=kind)

        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.families = {
            "requests": family(
                "tritonrag_router_requests_total",
                counter,
                "Requests routed, by version and mode (pinned, sticky, random, shadow)",
            ),
            "failures": family("tritonrag_router_failures_total", counter, "Routed streams that ended in an error"),
            "shadow_skipped": family(
                "tritonrag_router_shadow_skipped_total", counter, "Mirrors not sent: every shadow slot busy"
            ),
            "aborted": family(
                "tritonrag_router_aborted_total", counter, "Generator requests aborted because their caller cancelled"
            ),
            "rejected": family(
                "tritonrag_router_rejected_total", counter, "Requests refused before routing (bad or unavailable pin)"
            ),
            "weight": family(
                "tritonrag_router_weight", gauge, "Share of routed traffic by version and role (stable, canary, shadow)"
            ),
        }
        self.target = target
        self.metrics: dict[tuple, object] = {}
        self.lock = threading.Lock()

    def _metric(self, family: str, **labels):
        key = (family, *sorted(labels.items()))
        with self.lock:
            if key not in self.metrics:
                self.metrics[key] = self.families[family].Metric(labels={"model": self.target, **labels})
            return self.metrics[key]

    def count(self, family: str, version: int | None = None, mode: str | None = None) -> None:
        labels = {} if version is None else {"version": str(version), "mode": mode}
        self._metric(family, **labels).increment(1)

    def show_split(self, config: RoutingConfig) -> None:
        shares = {("stable", config.stable_version): 1.0 - config.canary_weight}
        if config.canary_version is not None:
            shares[("canary", config.canary_version)] = config.canary_weight
            shares[("shadow", config.canary_version)] = config.shadow_weight
        known = [key for key in self.metrics if key[0] == "weight"]
        for key in known:  # roles a version no longer has drop to 0
            labels = dict(key[1:])
            if (labels["role"], int(labels["version"])) not in shares:
                self.metrics[key].set(0.0)
        for (role, version), share in shares.items():
            self._metric("weight", role=role, version=str(version)).set(share)
