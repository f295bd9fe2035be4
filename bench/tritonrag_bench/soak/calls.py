"""The soak's three ways to call the server, each bounded by a deadline: a gRPC stream (optionally
cancelled after some responses), HTTP `generate`, and HTTP `generate_stream` (optionally dropped).

Each returns a `Call`: how it ended (an outcome code), when the first text came, how many
responses, the version that served it. A call still open at its deadline is HUNG and is then
cancelled (gRPC) or its connection closed (HTTP), so a hung server never blocks the soak.
Every call carries the server's inference key when $TRITONRAG_INFERENCE_KEY is set (tritonrag.triton.inference_key).
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass

import requests
import tritonclient.grpc as grpcclient

from tritonrag.triton import inference_key
from tritonrag_bench.soak.outcomes import (
    CANCELLED,
    DISCONNECTED,
    HUNG,
    OK,
    code_of_grpc,
    code_of_http,
)


@dataclass(frozen=True)
class Limits:
    """How long the soak waits for a call before it is HUNG, and the Triton timeout the client sends
    with it (microseconds; 0: none). The `llm` router bounds its generator stream by that timeout plus
    30 s (`stream_bound_s`, 330 s without one), so a stub that dies mid-stream cannot keep the call open."""

    deadline_s: float
    timeout_us: int = 0


@dataclass
class Call:
    code: str
    total: float
    ttft: float | None = None
    responses: int = 0
    served_version: int | None = None
    message: str = ""


class _Clock:
    def __init__(self, deadline_s: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + deadline_s
        self.first: float | None = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def since(self) -> float:
        return time.monotonic() - self.start

    def saw_text(self) -> None:
        if self.first is None:
            self.first = self.since()

    def call(self, code: str, responses: int, version: int | None, message: str = "") -> Call:
        return Call(code, self.since(), self.first, responses, version, message[:300])


def _grpc_text_and_version(result) -> tuple[bool, int | None, bool]:
    """(carries text, served_version if present, is the final response) of one streamed result."""
    response = result.get_response()
    final = (
        response.parameters["triton_final_response"].bool_param
        if "triton_final_response" in (response.parameters)
        else False
    )
    names = {output.name for output in response.outputs}
    text = "text_output" in names and any(result.as_numpy("text_output").reshape(-1))
    version = int(result.as_numpy("served_version").reshape(-1)[0]) if "served_version" in names else None
    return bool(text), version, final


def grpc_stream(url: str, model: str, inputs: list, limits: Limits, cancel_after: int | None = None) -> Call:
    """One request on its own gRPC stream; with `cancel_after`, the client cancels it after that many responses."""
    deadline_s = limits.deadline_s
    clock, events = _Clock(deadline_s), queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    responses, version = 0, None
    try:
        client.start_stream(
            callback=lambda result=None, error=None: events.put((result, error)), headers=inference_key.grpc_headers()
        )
        timeout = limits.timeout_us or None
        client.async_stream_infer(model, inputs, timeout=timeout, enable_empty_final_response=True)
        while True:
            try:
                result, error = events.get(timeout=max(clock.left(), 0.001))
            except queue.Empty:
                return clock.call(HUNG, responses, version, f"no end after {deadline_s:.0f} s")
            if error is not None:
                return clock.call(code_of_grpc(error.status(), error.message()), responses, version, error.message())
            responses += 1
            text, served, final = _grpc_text_and_version(result)
            version = served if served is not None else version
            if text:
                clock.saw_text()
            if final:
                return clock.call(OK, responses, version)
            if cancel_after is not None and responses >= cancel_after:
                client.stop_stream(cancel_requests=True)
                return clock.call(CANCELLED, responses, version)
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def _with_timeout(body: dict | str, limits: Limits) -> str:
    """The body as JSON with the client's timeout as `parameters.timeout` (how 2.51's generate passes one);
    a str body is sent as it is (JSON that Python would not write)."""
    if isinstance(body, str):
        return body
    if limits.timeout_us:
        body = {**body, "parameters": {**body.get("parameters", {}), "timeout": limits.timeout_us}}
    return json.dumps(body)


def http_generate(url: str, model: str, body: dict | str, limits: Limits) -> Call:
    """One `generate` call."""
    deadline_s = limits.deadline_s
    clock = _Clock(deadline_s)
    data = _with_timeout(body, limits)
    try:
        reply = requests.post(
            f"http://{url}/v2/models/{model}/generate",
            data=data,
            headers=inference_key.http_headers(),
            timeout=deadline_s,
        )
    except requests.Timeout:
        return clock.call(HUNG, 0, None, f"no answer after {deadline_s:.0f} s")
    payload = _json_or_text(reply.text)
    error = payload.get("error") if isinstance(payload, dict) else None
    if reply.status_code == 200 and error is None:  # one response: no time to first token of its own
        return clock.call(OK, 1, payload.get("served_version"))
    return clock.call(code_of_http(reply.status_code, str(error or reply.text)), 0, None, str(error or reply.text))


def http_stream(url: str, model: str, body: dict, limits: Limits, drop_after: int | None = None) -> Call:
    """One `generate_stream` call (server-sent events); with `drop_after`, the client closes the
    connection after that many events, mid-answer (a disconnect)."""
    deadline_s = limits.deadline_s
    clock, responses, version = _Clock(deadline_s), 0, None
    try:
        reply = requests.post(
            f"http://{url}/v2/models/{model}/generate_stream",
            data=json.dumps(body),
            headers=inference_key.http_headers(),
            stream=True,
            timeout=deadline_s,
        )
    except requests.Timeout:
        return clock.call(HUNG, 0, None, f"no answer after {deadline_s:.0f} s")
    with reply:
        if reply.status_code != 200:  # Triton sends the error as an event all the same
            message = _sse_error(reply.text)
            return clock.call(code_of_http(reply.status_code, message), 0, None, message)
        try:
            for line in reply.iter_lines():
                if clock.left() <= 0:
                    return clock.call(HUNG, responses, version, f"no end after {deadline_s:.0f} s")
                if not line.startswith(b"data:"):
                    continue
                event = _json_or_text(line[5:].decode("utf-8", "replace"))
                if isinstance(event, dict) and "error" in event:
                    message = str(event["error"])
                    return clock.call(code_of_http(400, message), responses, version, message)
                responses += 1
                version = event.get("served_version", version) if isinstance(event, dict) else version
                if isinstance(event, dict) and event.get("text_output"):
                    clock.saw_text()
                if drop_after is not None and responses >= drop_after:
                    return clock.call(DISCONNECTED, responses, version)
        except requests.exceptions.ConnectionError as exc:  # a read timeout mid-stream arrives as this
            if clock.left() <= 0:
                return clock.call(HUNG, responses, version, f"no end after {deadline_s:.0f} s")
            return clock.call(code_of_http(502, str(exc)), responses, version, str(exc))
    return clock.call(OK, responses, version)


def _sse_error(text: str) -> str:
    """The error of an event stream's body (`data: {"error": ...}`), else the body."""
    for line in text.splitlines():
        event = _json_or_text(line.removeprefix("data:").strip())
        if isinstance(event, dict) and "error" in event:
            return str(event["error"])
    return text.strip()


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
