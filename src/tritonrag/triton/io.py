"""Glue shared by the Triton model.py adapters: read inputs, build tensors, map errors.

Imported only inside tritonserver (it needs `triton_python_backend_utils`); the logic the
adapters call lives in modules that are tested without a server.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.errors import INTERNAL_MARKER, InvalidInput, Unavailable
from tritonrag.paths import resolve_artifact


def model_parameters(args: dict) -> dict[str, str]:
    """config.pbtxt `parameters` as a plain {key: string_value} dict."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def repository_root(args: dict) -> Path:
    """The model repository folder (args give this model's own folder inside it)."""
    return Path(args["model_repository"]).resolve().parent


def artifact_parameter(args: dict, key: str) -> Path:
    params = model_parameters(args)
    if key not in params:
        raise pb_utils.TritonModelException(f"config.pbtxt parameter {key!r} is missing")
    return resolve_artifact(params[key], repository_root(args))


def input_reader(request) -> Callable[[str], np.ndarray | None]:
    """Read a request's input tensors by name as numpy arrays (None when absent): what vllm_interface parses."""

    def read(name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    return read


def _single(request, name: str, required: bool):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InvalidInput(f"input {name!r} is required")
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise InvalidInput(f"input {name!r} must hold exactly one element per request, got {values.size}")
    return values[0]


def bytes_input(request, name: str, required: bool = True) -> bytes | None:
    value = _single(request, name, required)
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def str_input(request, name: str, required: bool = True) -> str | None:
    """A BYTES input decoded as UTF-8 (for tensors our own models produced)."""
    value = bytes_input(request, name, required)
    return None if value is None else value.decode("utf-8")


def int_input(request, name: str, required: bool = False) -> int | None:
    value = _single(request, name, required)
    return None if value is None else int(value)


def bool_input(request, name: str, default: bool) -> bool:
    value = _single(request, name, required=False)
    return default if value is None else bool(value)


def bytes_tensor(name: str, value: str | bytes, shape: tuple[int, ...] = (1,)):
    data = value.encode("utf-8") if isinstance(value, str) else value
    return pb_utils.Tensor(name, np.array([data], dtype=np.object_).reshape(shape))


def error_response(exc: BaseException):
    """INVALID_ARG for bad input, UNAVAILABLE for a full queue, INTERNAL (with the cause) otherwise."""
    if isinstance(exc, InvalidInput):
        code = pb_utils.TritonError.INVALID_ARG
    elif isinstance(exc, Unavailable):
        code = pb_utils.TritonError.UNAVAILABLE
    else:
        code = pb_utils.TritonError.INTERNAL
        pb_utils.Logger.log_error(f"tritonrag: {traceback.format_exc()}")
    message = str(exc)
    if code == pb_utils.TritonError.INTERNAL and not message.startswith(INTERNAL_MARKER):
        message = f"{INTERNAL_MARKER}: {exc!r}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class StreamSender:
    """A decoupled request's response sender that sends nothing after the FINAL flag and never raises.

    Several threads may end one stream (a relay, a cancel, an error path); Triton's sender must get
    exactly one FINAL and nothing after it, and an exception escaping a stream thread would leave the
    stream open. A failed send is logged and the stream counts as ended.
    """

    def __init__(self, request):
        self._request = request
        self._sender = request.get_response_sender()
        self._lock = threading.Lock()
        self.closed = False

    def cancelled(self) -> bool:
        """Whether the caller cancelled, asked only while the stream is open (Triton may release the
        request once FINAL is sent; under the lock, so no FINAL goes out during the question)."""
        with self._lock:
            if self.closed:
                return False
            try:
                return bool(self._request.is_cancelled())
            except Exception:  # noqa: BLE001 - cannot tell: the caller is treated as gone
                return True

    def cancel(self) -> bool:
        """End the stream (FINAL, no error) if the caller cancelled it; True if this call ended it."""
        with self._lock:
            if self.closed:
                return False
            try:
                gone = bool(self._request.is_cancelled())
            except Exception:  # noqa: BLE001
                gone = True
        return gone and self.send(final=True)

    def send(self, response=None, final: bool = False) -> bool:
        """Send one response (and/or FINAL); False if the stream had already ended or the send failed."""
        with self._lock:
            if self.closed:
                return False
            self.closed = final
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
            try:
                if response is None:
                    self._sender.send(flags=flags)
                else:
                    self._sender.send(response, flags=flags)
            except Exception as exc:  # noqa: BLE001 - e.g. the client left: this stream is over
                self.closed = True
                pb_utils.Logger.log_warn(f"tritonrag: response not sent, stream ended: {exc}")
                return False
            return True

    def fail(self, exc: BaseException) -> bool:
        """End the stream with `exc` as its typed error (see error_response)."""
        return self.send(error_response(exc), final=True)


def respond_each(requests, handle: Callable) -> list:
    """One response per request: `handle(request)` returns output tensors or raises."""
    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except Exception as exc:  # noqa: BLE001 - every failure becomes that request's error
            responses.append(error_response(exc))
    return responses


def valid_requests(requests, parse: Callable) -> tuple[list, list, list]:
    """Parse each request of a dynamic batch; bad ones get their error now, the rest run together.

    Returns (responses with None at the valid positions, parsed values, their indices).
    """
    responses: list = [None] * len(requests)
    parsed, indices = [], []
    for index, request in enumerate(requests):
        try:
            parsed.append(parse(request))
            indices.append(index)
        except Exception as exc:  # noqa: BLE001
            responses[index] = error_response(exc)
    return responses, parsed, indices
