"""A model's requests to another model of its own server, over that server's gRPC endpoint.

The `llm` router forwards each request to a `generator` version. It did so with decoupled BLS
calls, and under many concurrent BLS streams (cancel storms, refused floods, shadow mirrors)
tritonserver 2.51's Python backend crashed (SIGSEGV / boost::interprocess::lock_exception in
libtriton_python.so). A gRPC stream to the server's own endpoint is what any client does, the
path Triton serves every day, and it brings what BLS lacks in 2.51: a caller can cancel it, and
Triton then cancels the generator's request (its `is_cancelled()`), which frees its KV blocks.

One `LoopbackStream` is one request. Its responses arrive as `Reply`s: output arrays, or an
error. A caller's Triton timeout (microseconds) goes on with the request as its own, so the
generator's deadline is the caller's (tritonrag.engine.serving.Deadline). A gRPC stream carries
an error's message but not its code, so `typed_error` recovers the code from the words our
stages and Triton write (tritonrag.errors.error_from_message).
Clients are pooled: a client holds one stream at a time, and gRPC shares the connection.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tritonrag.errors import Unavailable, error_from_message

GRPC_URL_ENV = "TRITONRAG_GRPC_URL"  # the server's own gRPC address, set by tritonrag.triton.server
GRPC_ROOT_CERT_ENV = "TRITONRAG_GRPC_ROOT_CERT"  # set when that endpoint speaks TLS: what verifies its certificate
QUIET_CHECK_S = 2.0  # a stream silent this long asks whether its model's stub still runs (see LoopbackStream)


def grpc_url(parameter: str) -> str:
    """The address to reach this server at: $TRITONRAG_GRPC_URL, else the model's `grpc_url` parameter."""
    return os.environ.get(GRPC_URL_ENV) or parameter


def typed_error(error: InferenceServerException) -> Exception:
    """The typed error behind a stream's error: a failed call has a gRPC status (UNAVAILABLE: the
    server is going away; anything else INTERNAL); a request's error only its message
    (tritonrag.errors.error_from_message)."""
    status = error.status()
    if status is None:
        return error_from_message(error.message())
    if status == "StatusCode.UNAVAILABLE":
        return Unavailable(f"the generator cannot be reached: {error.message()}")
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return Unavailable("deadline exceeded: the generator did not end the request within the router's bound")
    return RuntimeError(f"internal error: the generator's stream failed ({status}): {error.message()}")


@dataclass
class Reply:
    """One response of the stream: its outputs (name -> array, present ones only), or an error."""

    outputs: dict[str, np.ndarray]
    error: Exception | None = None
    final: bool = False


class ClientPool:
    """gRPC clients of one server, reused: each carries one stream at a time."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, root_cert: str | None = None) -> None:
        self.url = url
        self.headers = headers
        self.root_cert = root_cert if root_cert is not None else os.environ.get(GRPC_ROOT_CERT_ENV) or None
        self._idle: list[grpcclient.InferenceServerClient] = []
        self._lock = threading.Lock()

    def take(self) -> grpcclient.InferenceServerClient:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if self.root_cert is None:
            return grpcclient.InferenceServerClient(self.url)
        return grpcclient.InferenceServerClient(self.url, ssl=True, root_certificates=self.root_cert)

    def give(self, client: grpcclient.InferenceServerClient) -> None:
        with self._lock:
            self._idle.append(client)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            client.close()


class LoopbackStream:
    """One request to `model` (a version of it) as a gRPC stream; iterate for its replies.

    `cancel()` may come from any thread: the stream's call is cancelled (Triton cancels the
    request), and the iteration ends. The iteration ends at the request's final response or its
    first error; the client goes back to the pool either way. With `stub_dead` (asked whenever
    the stream has been silent for QUIET_CHECK_S), a stream whose model's stub process has exited
    ends at once with UNAVAILABLE: that stub will never answer (tritonrag.triton.stubs).
    """

    def __init__(
        self,
        pool: ClientPool,
        model: str,
        version: int,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str,
        timeout_us: int = 0,  # Triton's request timeout for the request; 0: none (the model's default)
        bound_s: float | None = None,  # the whole stream's gRPC deadline: past it the stream fails
        stub_dead: Callable[[], bool] | None = None,  # whether the model version's stub has exited
    ) -> None:
        self._pool = pool
        self._stub_dead = stub_dead
        self._name = f"{model} version {version}"
        self._replies: queue.Queue[Reply] = queue.Queue()
        self._lock = threading.Lock()
        self._client: grpcclient.InferenceServerClient | None = pool.take()
        self.cancelled = False
        # The bound ends the stream even if the generator never answers (a dead or stalled stub).
        self._client.start_stream(callback=self._on_response, stream_timeout=bound_s, headers=pool.headers)
        self._outputs = outputs
        try:
            self._client.async_stream_infer(
                model,
                [_infer_input(name, array) for name, array in inputs.items()],
                model_version=str(version),
                outputs=[grpcclient.InferRequestedOutput(name) for name in outputs],
                request_id=request_id,
                enable_empty_final_response=True,
                timeout=timeout_us or None,
            )
        except InferenceServerException as exc:  # the stream was refused as it opened
            self._close(cancel=True)
            raise self._refusal(exc) from None

    def _refusal(self, exc: InferenceServerException) -> Exception:
        """Why the stream was refused: the server's reason reaches the callback, tritonclient raises only
        "the stream is no longer in valid state"."""
        try:
            reply = self._replies.get(timeout=1.0)
        except queue.Empty:
            return typed_error(exc)
        return reply.error or typed_error(exc)

    def _on_response(self, result, error) -> None:
        if error is not None:
            self._replies.put(Reply({}, typed_error(error)))
            return
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        present = {o.name for o in response.outputs}
        arrays = {name: result.as_numpy(name) for name in self._outputs if name in present}
        self._replies.put(Reply(arrays, final=final))

    def __iter__(self) -> Iterator[Reply]:
        try:
            while True:
                reply = self._next()
                if self.cancelled:
                    return
                yield reply
                if reply.final or reply.error is not None:
                    return
        finally:
            self._close(cancel=True)

    def _next(self) -> Reply:
        """The next reply; an UNAVAILABLE one if the stream is silent and its stub has exited."""
        if self._stub_dead is None:
            return self._replies.get()
        while True:
            try:
                return self._replies.get(timeout=QUIET_CHECK_S)
            except queue.Empty:
                if self._stub_dead():
                    return Reply({}, Unavailable(f"{self._name} is not healthy: its stub process exited mid-request"))

    def cancel(self) -> None:
        """End the request now: Triton cancels it; the iteration ends."""
        self.cancelled = True
        self._close(cancel=True)
        self._replies.put(Reply({}, final=True))  # wakes the iteration

    def _close(self, cancel: bool) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        try:
            client.stop_stream(cancel_requests=cancel)
        finally:
            self._pool.give(client)


def _infer_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor
