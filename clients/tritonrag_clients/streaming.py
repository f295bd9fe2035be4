"""Stream a request to the server over tritonclient gRPC: deltas as they arrive, then the end.

Used by the `ask` CLI, the benchmark and the tests. The LLM's inputs are vllm_backend's
(tritonrag.triton.vllm_interface): `generator_inputs` builds them for `llm` (or a pinned
`generator` version), asking for the finish reason and the token counts.
"""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tritonrag.triton import inference_key
from tritonrag.triton import vllm_interface as llm

# What our clients ask the LLM to return besides the text.
DEFAULT_RETURNS = ("finish_reason", "num_input_tokens", "num_output_tokens")


@dataclass
class StreamEvent:
    """One streamed response: a text delta, possibly the sources, possibly the end."""

    text: str = ""
    sources: list[dict] | None = None
    final: bool = False
    finish_reason: str | None = None
    num_output_tokens: int = 0  # tokens in this response, when asked (return_num_output_tokens)
    error: InferenceServerException | None = None
    time: float = field(default_factory=time.monotonic)


def bytes_input(name: str, value: str | bytes) -> grpcclient.InferInput:
    data = value.encode("utf-8") if isinstance(value, str) else value
    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return tensor


def rag_inputs(query: str | bytes, top_k: int | None = None, sampling: dict | str | None = None) -> list:
    inputs = [bytes_input("query", query)]
    if top_k is not None:
        tensor = grpcclient.InferInput("top_k", [1], "INT32")
        tensor.set_data_from_numpy(np.array([top_k], dtype=np.int32))
        inputs.append(tensor)
    if sampling is not None:
        inputs.append(
            bytes_input("sampling_parameters", sampling if isinstance(sampling, str) else json.dumps(sampling))
        )
    return inputs


def bool_input(name: str, value: bool) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1], "BOOL")
    tensor.set_data_from_numpy(np.array([value], dtype=bool))
    return tensor


def generator_inputs(
    prompt: str | bytes,
    sampling: dict | str | None = None,
    stream: bool = True,
    returns: tuple[str, ...] = DEFAULT_RETURNS,
    exclude_input_in_output: bool | None = None,
) -> list:
    """vllm_backend's inputs for the LLM: the prompt, sampling JSON, `stream` and a `return_<name>` per output."""
    inputs = [bytes_input(llm.TEXT_INPUT.name, prompt), bool_input(llm.STREAM.name, stream)]
    if sampling is not None:
        raw = sampling if isinstance(sampling, str) else json.dumps(sampling)
        inputs.append(bytes_input(llm.SAMPLING_PARAMETERS.name, raw))
    if exclude_input_in_output is not None:
        inputs.append(bool_input(llm.EXCLUDE_INPUT.name, exclude_input_in_output))
    inputs += [bool_input(f"return_{name}", True) for name in returns]
    return inputs


def event_from_result(result, error) -> StreamEvent:
    """One gRPC stream callback (result or error) as a StreamEvent."""
    if error is not None:
        return StreamEvent(final=True, error=error)
    response = result.get_response()
    final = (
        response.parameters["triton_final_response"].bool_param
        if "triton_final_response" in response.parameters
        else False
    )
    names = {output.name for output in response.outputs}
    event = StreamEvent(final=final)
    if "text_output" in names:
        event.text = "".join(item.decode("utf-8") for item in result.as_numpy("text_output").reshape(-1))
    if "sources" in names:
        raw = result.as_numpy("sources").reshape(-1)[0]
        event.sources = json.loads(raw) if raw else None
    if "finish_reason" in names:
        reason = result.as_numpy("finish_reason").reshape(-1)[0].decode()
        event.finish_reason = None if reason == "None" else reason  # vllm_backend's "None" until the end
    if "num_output_tokens" in names:
        event.num_output_tokens = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
    return event


class StreamingClient:
    """One gRPC stream; several requests may be in flight on it at once.

    Triton reports a stream error without the request's id, so an error is routed to the
    request only when it is the one in flight: callers that expect errors send one at a time.
    """

    def __init__(self, url: str = "127.0.0.1:8001", root_cert: str | None = None, key: str | None = None):
        # root_cert: the server's gRPC speaks TLS, verified by this certificate (tritonserver --grpc-use-ssl)
        tls = {} if root_cert is None else {"ssl": True, "root_certificates": root_cert}
        self.client = grpcclient.InferenceServerClient(url, **tls)
        self.events: dict[str, queue.Queue[StreamEvent]] = {}
        self.stream_error: InferenceServerException | None = None  # the stream's own failure (a locked server)
        # key: the server's inference key (None: $TRITONRAG_INFERENCE_KEY, if set; tritonrag.triton.inference_key)
        self.client.start_stream(callback=self._on_response, headers=inference_key.grpc_headers(key))

    def _on_response(self, result=None, error=None) -> None:
        # gRPC stream errors carry no request id: with errors expected, keep one request in flight.
        request_id = result.get_response().id if result is not None else None
        target = self.events.get(request_id)
        if target is None and len(self.events) == 1:
            target = next(iter(self.events.values()))
        if target is not None:
            target.put(event_from_result(result, error))
        elif error is not None:  # the stream failed before any request (refused for want of the inference key)
            self.stream_error = error

    def send(self, model: str, inputs: list, request_id: str | None = None, model_version: str = "") -> str:
        request_id = request_id or uuid.uuid4().hex
        self.events[request_id] = queue.Queue()
        try:
            self.client.async_stream_infer(
                model, inputs, request_id=request_id, model_version=model_version, enable_empty_final_response=True
            )
        except InferenceServerException:
            self.events.pop(request_id, None)
            if self.stream_error is not None:  # tritonclient says only "no longer in valid state": say why
                raise self.stream_error from None
            raise
        return request_id

    def receive(self, request_id: str, timeout: float = 300.0) -> Iterator[StreamEvent]:
        """Yield events of one request until its final response (or error)."""
        events = self.events[request_id]
        try:
            while True:
                event = events.get(timeout=timeout)
                yield event
                if event.final:
                    return
        finally:
            self.events.pop(request_id, None)

    def stream(self, model: str, inputs: list, **kwargs) -> Iterator[StreamEvent]:
        yield from self.receive(self.send(model, inputs, **kwargs))

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()

    def __enter__(self) -> StreamingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def collect(events: Iterator[StreamEvent]) -> tuple[str, list[dict] | None, StreamEvent]:
    """Drain a stream: (full text, sources, last event); raises the stream's error.

    The last event carries the stream's finish reason and its output tokens in all, also when
    it is the empty final response a router sends after the last delta.
    """
    text, sources, last = [], None, None
    reason, tokens = None, 0
    for event in events:
        if event.error is not None:
            raise event.error
        text.append(event.text)
        sources = sources or event.sources
        reason = event.finish_reason or reason
        tokens += event.num_output_tokens
        last = event
    if last is not None:
        last.finish_reason, last.num_output_tokens = reason, tokens
    return "".join(text), sources, last
