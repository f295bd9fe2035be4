"""Triton adapter for the public LLM, `llm` (logic: tritonrag.triton.canary, tritonrag.triton.vllm_interface).

It speaks vllm_backend's interface and sends each request to a generator version: the stable
one unless the canary split or a pin says otherwise, and streams that version's responses back.
`execute` reads each request (request parameters folded into the generator's input
tensors, every flag explicit, since a forwarded request carries tensors), routes it on Triton's
thread (so a seeded router draws in arrival order) and hands it to a worker that calls the
chosen generator version and forwards every response, adding `served_version`. Mirrors to the shadow
version run on their own few workers, their output dropped; for a greedy request the mirror's
text is compared with the primary's (tritonrag.triton.shadow). Routing counters, the split
in force, shadow agreement and the rollout in the weights file are Triton custom metrics
(tritonrag.triton.router_metrics). With `rollout_driver` on, a thread of this router drives
a guarded rollout found in the weights file (tritonrag.triton.rollout_driver), scraping its
own server's /metrics; several replicas share the work through the file's lock and lease.

Each generator request is a gRPC stream to this server's own endpoint
(tritonrag.triton.loopback), not a BLS call: tritonserver 2.51's Python backend crashed under
many concurrent decoupled BLS streams (cancel storms, refused floods, shadow mirrors), and a BLS
request cannot be cancelled there. A caller that cancels has its stream ended at once and the
generator's request cancelled (Triton cancels it; the engine drops the sequence within a step and
frees its KV blocks). A thread polls the open streams, so a cancel is seen while a request still
waits in the generator's queue. The caller's Triton timeout (gRPC `timeout`, or HTTP generate's
`timeout` parameter) goes on with the generator request, whose engine fails it past that deadline
(UNAVAILABLE, "deadline exceeded"); mirrors get the generator's default. Streams in flight are
bounded (`max_streams`): one more is refused UNAVAILABLE at once. A generator version whose stub
process has exited (Triton 2.51 does not restart a decoupled model's stub) is seen in /proc
(tritonrag.triton.stubs): new requests go to the other routed version, a pin to it is refused
UNAVAILABLE, and its silent streams end UNAVAILABLE within seconds instead of at their bound. Every stream's sender is a
triton_io.StreamSender: one FINAL, nothing after it, and the request is never touched once FINAL
is sent.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.errors import Unavailable
from tritonrag.sampling import SamplingParams
from tritonrag.triton import inference_key
from tritonrag.triton import io as triton_io
from tritonrag.triton.canary import (
    RoutingConfig,
    WeightsFile,
    avoid_dead,
    canary_file_path,
    check_pin,
    choose,
    parse_pin,
)
from tritonrag.triton.loopback import ClientPool, LoopbackStream, grpc_url
from tritonrag.triton.prom import scrape
from tritonrag.triton.rollout import RolloutState
from tritonrag.triton.rollout_driver import RolloutDriver, drive_until, driver_id, metrics_url
from tritonrag.triton.router_metrics import RouterMetrics
from tritonrag.triton.shadow import ShadowPair, is_greedy
from tritonrag.triton.stubs import StubWatch
from tritonrag.triton.vllm_interface import SOURCES_INPUT, read_request

BOUND_GRACE_S = 30.0  # past the generator's own deadline, before the router gives up on its stream


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
        # $TRITONRAG_CANARY_FILE wins (a mounted ConfigMap); the path is kept unresolved (tritonrag.triton.canary)
        self.weights = WeightsFile(
            canary_file_path(
                params.get("weights_file", "${TRITONRAG_ARTIFACTS}/canary.json"), triton_io.repository_root(args)
            ),
            default,
        )
        seed = params.get("random_seed", "").strip()
        self.rng = random.Random(int(seed) if seed else None)
        self.outputs = [o["name"] for o in config["output"] if o["name"] != "served_version"]
        # No generator stream outlives this (the caller's timeout, if shorter, plus the same grace): a dead
        # or stalled generator stub never answers, and its streams would otherwise never end.
        self.bound_s = float(params.get("stream_bound_s", "330"))
        max_streams = int(params.get("max_streams", "64"))
        self.streams = ThreadPoolExecutor(max_streams, thread_name_prefix="route")
        # In-flight streams are bounded: one more is refused UNAVAILABLE at once, never queued without end.
        self.stream_slots = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams
        shadow_slots = int(params.get("max_shadow_streams", "8"))
        self.shadows = ThreadPoolExecutor(shadow_slots, thread_name_prefix="shadow")
        self.shadow_slots = threading.BoundedSemaphore(shadow_slots)
        self.metrics = RouterMetrics(self.target)
        self.stubs = StubWatch(self.target)  # generator versions whose stub has exited
        self.metrics.show_split(self.weights.current())
        self.stopped = threading.Event()
        self.watcher = threading.Thread(target=self._watch_weights, name="weights", daemon=True)
        self.watcher.start()
        # This server's own gRPC endpoint ($TRITONRAG_GRPC_URL, set by tritonrag.triton.server), with the
        # inference key when inference is locked ($TRITONRAG_INFERENCE_KEY, passed on by tritonserver's environment).
        self.clients = ClientPool(grpc_url(params.get("grpc_url", "127.0.0.1:8001")), inference_key.grpc_headers())
        self.live: dict[str, tuple] = {}  # generator request id -> (caller's StreamSender, stream, version)
        self.live_lock = threading.Lock()
        threading.Thread(target=self._watch_cancels, name="cancels", daemon=True).start()
        if params.get("rollout_driver", "false").strip().lower() == "true":
            self._start_driver(metrics_url(params.get("metrics_url", "http://127.0.0.1:8002/metrics")))

    def _start_driver(self, url: str) -> None:
        """This replica's share of driving a guarded rollout (one driver holds the lease at a time)."""
        driver = RolloutDriver(
            self.weights.path, lambda: scrape([url]), driver_id("router"), self.target, pb_utils.Logger.log_info
        )
        thread = threading.Thread(target=drive_until, args=(driver, self.stopped), name="rollout", daemon=True)
        thread.start()

    def execute(self, requests):
        for request in requests:
            sender = triton_io.StreamSender(request)
            try:
                inputs, timeout_us = _generator_inputs(request)
                config = self.weights.current()
                drawn = choose(
                    config, triton_io.bytes_input(request, "routing_key", required=False), self._pin(request), self.rng
                )
                route = avoid_dead(drawn, config, self.stubs.dead_versions(), self.target)
                if route.version != drawn.version:
                    self.metrics.count("rerouted", drawn.version, drawn.mode)
                if not self.stream_slots.acquire(blocking=False):
                    raise Unavailable(f"{self.max_streams} streams in flight, the router's limit: retry later")
            except Exception as exc:  # noqa: BLE001 - that request's error; the server keeps serving
                self.metrics.count("rejected")
                sender.fail(exc)
                continue
            # Unique per generator request: the generator's logs and metrics tell routed requests apart.
            request_id = f"{request.request_id() or 'route'}@{uuid.uuid4().hex[:12]}"
            self.metrics.count("requests", route.version, route.mode)
            pair = self._pair(inputs, route.shadow) if route.shadow is not None else None
            self.streams.submit(
                self._forward, request, sender, inputs, request_id, route.version, route.mode, pair, timeout_us
            )
            if route.shadow is not None:
                self._mirror(inputs, request_id + "-shadow", route.shadow, pair)
        return None

    def _pair(self, inputs, version: int) -> ShadowPair | None:
        """Where a greedy request's two outputs meet to be compared (None: not greedy, nothing to compare)."""
        sampling = inputs.get("sampling_parameters")
        if not is_greedy(None if sampling is None else sampling.reshape(-1)[0]):
            return None
        return ShadowPair(lambda agreement: self.metrics.count_agreement(version, agreement))

    def _pin(self, request) -> int | None:
        pin = parse_pin(triton_io.bytes_input(request, "model_version", required=False))
        if pin is None:
            return None
        ready = lambda v: pb_utils.is_model_ready(model_name=self.target, model_version=str(v))  # noqa: E731
        return check_pin(pin, ready, self.weights.current(), self.target)

    def _stream(self, inputs, request_id: str, version: int, timeout_us: int = 0) -> LoopbackStream:
        bound_s = min(self.bound_s, timeout_us / 1e6 + BOUND_GRACE_S) if timeout_us else self.bound_s
        return LoopbackStream(
            self.clients,
            self.target,
            version,
            inputs,
            self.outputs,
            request_id,
            timeout_us,
            bound_s,
            stub_dead=lambda: self.stubs.dead(version),
        )

    def _forward(
        self, request, sender, inputs, request_id: str, version: int, mode: str, pair=None, timeout_us: int = 0
    ) -> None:
        """Stream the chosen version's responses to the caller; its error ends the stream.
        With a shadow `pair`, the whole text goes to it when the stream ended well (None otherwise)."""
        served = pb_utils.Tensor("served_version", np.array([version], dtype=np.int32))
        texts: list[str] | None = []
        stream = None
        ended = False  # the generator's final response went out, carrying the FINAL flag (as vllm_backend's does)
        try:
            stream = self._stream(inputs, request_id, version, timeout_us)
            with self.live_lock:
                self.live[request_id] = (sender, stream, version)
            for reply in stream:
                if reply.error is not None:
                    self.metrics.count("failures", version, mode)
                    sender.fail(reply.error)
                    texts = None
                    break
                if not reply.outputs or sender.closed:
                    continue
                if sender.cancel():
                    self._cancelled(stream, version)
                    break
                if texts is not None and pair is not None:
                    texts.append(_text(reply.outputs))
                tensors = [pb_utils.Tensor(name, array) for name, array in reply.outputs.items()]
                response = pb_utils.InferenceResponse(output_tensors=tensors + [served])
                ended = sender.send(response, final=reply.final) and reply.final
            # No empty FINAL after a final response with outputs: load tools count it as a response.
            if stream.cancelled or not (ended or sender.send(final=True)):  # ended before: cancelled or failed
                texts = None
        except Exception as exc:  # noqa: BLE001
            texts = None
            self.metrics.count("failures", version, mode)
            sender.fail(exc)  # no-op when the stream already ended
        finally:
            with self.live_lock:
                self.live.pop(request_id, None)
            if stream is not None:
                stream.cancel()  # no-op after the final response; frees the generator's request otherwise
            self.stream_slots.release()
            if pair is not None:
                pair.primary_done(texts if texts is None else "".join(texts))

    def _cancelled(self, stream: LoopbackStream, version: int) -> None:
        """The caller cancelled: cancel the generator's request (Triton tells the engine, which frees its blocks)."""
        if not stream.cancelled:
            stream.cancel()
            self.metrics.count("aborted", version, "cancel")

    def _watch_cancels(self) -> None:
        """A caller may cancel while its request waits in the generator's queue (no response arrives
        to notice it on): poll the open streams, end a cancelled one and cancel its generator request."""
        while not self.stopped.wait(0.25):
            with self.live_lock:
                streams = list(self.live.values())
            for sender, stream, version in streams:
                if sender.cancel():
                    self._cancelled(stream, version)

    def _mirror(self, inputs, request_id: str, version: int, pair: ShadowPair | None) -> None:
        if not self.shadow_slots.acquire(blocking=False):
            self.metrics.count("shadow_skipped", version, "shadow")
            return
        self.metrics.count("requests", version, "shadow")
        self.shadows.submit(self._shadow, inputs, request_id, version, pair)

    def _shadow(self, inputs, request_id: str, version: int, pair: ShadowPair | None) -> None:
        """Run the mirror to its end; its text goes only to `pair` (compared with the primary's)."""
        texts: list[str] | None = []
        try:
            for reply in self._stream(inputs, request_id, version):
                if reply.error is not None:
                    self.metrics.count("failures", version, "shadow")
                    texts = None
                    break
                if texts is not None:
                    texts.append(_text(reply.outputs))
        except Exception:  # noqa: BLE001
            texts = None
            self.metrics.count("failures", version, "shadow")
        finally:
            self.shadow_slots.release()
            if pair is not None:
                pair.shadow_done(None if texts is None else "".join(texts))

    def _watch_weights(self) -> None:
        """Pick up a changed weights file even when idle: the gauges show the split and the rollout in force."""
        shown, reported, decided, dead = None, None, None, set()
        while not self.stopped.wait(1.0):
            config = self.weights.current()
            self.metrics.show_split(config)
            dead = self._show_stubs(config, dead)
            decided = self._show_rollout(decided)
            if config != shown:
                shown = config
                pb_utils.Logger.log_info(f"llm: split is {config.describe()}")
            if self.weights.error != reported:
                reported = self.weights.error
                if reported:
                    pb_utils.Logger.log_error(f"llm: {reported}; keeping {config.describe()}")

    def _show_stubs(self, config: RoutingConfig, known: set[int]) -> set[int]:
        """Each routed version's stub up or not; log a version whose stub has just exited."""
        dead = self.stubs.dead_versions()
        self.metrics.show_up(config.versions(), dead)
        for version in sorted(dead - known):
            pb_utils.Logger.log_error(
                f"llm: {self.target} version {version}'s stub process has exited; Triton 2.51 does not restart "
                "a decoupled model's stub: requests go to the other routed version until the model is reloaded"
            )
        return dead

    def _show_rollout(self, decided):
        """The rollout's gauges; log a decision not seen before (every replica logs what it follows)."""
        try:
            state = RolloutState.from_dict(self.weights.rollout) if self.weights.rollout else None
        except (KeyError, TypeError, ValueError) as exc:
            pb_utils.Logger.log_error(f"llm: cannot read the rollout in {self.weights.path}: {exc}")
            return decided
        self.metrics.show_rollout(state)
        decision = state.last_decision if state is not None else None
        if decision is not None and decision != decided:
            pb_utils.Logger.log_info(f"llm: rollout of version {state.canary_version}: {decision.describe()}")
        return decision

    def finalize(self):
        self.stopped.set()
        self.streams.shutdown(wait=True)  # in-flight streams finish before the model goes away
        self.shadows.shutdown(wait=True)
        self.clients.close()


def _generator_inputs(request) -> tuple[dict[str, np.ndarray], int]:
    """The generator's inputs as arrays owned by this process (they outlive execute), and the
    caller's timeout in microseconds (0: none).

    vllm_backend's inputs with request parameters folded in and every flag explicit (a
    bad one is INVALID_ARG here), and the ensemble's sources passed through.
    """
    llm_request = read_request(triton_io.input_reader(request), request.parameters())
    # Every sampling value checked here, so a bad one is refused before a stream is opened.
    SamplingParams.from_dict(llm_request.engine_sampling())
    arrays = dict(llm_request.to_inputs())
    sources = pb_utils.get_input_tensor_by_name(request, SOURCES_INPUT.name)
    if sources is not None:
        arrays[SOURCES_INPUT.name] = np.array(sources.as_numpy(), copy=True)
    return arrays, llm_request.client_timeout_us(request.timeout())


def _text(outputs: dict[str, np.ndarray]) -> str:
    """A response's text_output, decoded (empty when it has none)."""
    array = outputs.get("text_output")
    if array is None:
        return ""
    return "".join(t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in array.reshape(-1))
