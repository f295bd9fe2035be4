"""The bridge to Triton: one tritonclient asyncio gRPC channel, one bidirectional stream per generation.

Each generation opens its own `ModelStreamInfer` stream, sends its one request and half-closes;
Triton ends the stream once the request's last response is out (so no empty final response is
needed, which tritonclient's asyncio client cannot ask for: its `triton_` parameters are reserved). Ending the iteration early (the
HTTP client went away, or the service is done with it) cancels the gRPC call, and Triton cancels
the request: the model sees `is_cancelled()` and the engine frees its KV blocks. Every failure
becomes an `OpenAIError` with the right status. When tritonserver's inference is locked, every call
carries the inference key (tritonrag.triton.inference_key); a refusal for want of it is a 502, not a 503:
retrying does not help.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import aio as grpcaio
from tritonclient.utils import InferenceServerException

from tritonrag.openai import triton_map
from tritonrag.openai.errors import OpenAIError, from_triton
from tritonrag.openai.triton_map import Ask, ModelInterface, Piece
from tritonrag.triton import inference_key

RESTRICTED = "is restricted, expecting header"  # Triton 2.51's refusal of a call without its key (gRPC UNAVAILABLE)


def _unavailable(detail: str) -> OpenAIError:
    return OpenAIError(503, f"The model server is unavailable: {detail}", type="server_error", code="unavailable")


class TritonBridge:
    """The service's only way to Triton: model interfaces, streamed generations, embeddings."""

    def __init__(self, url: str, root_cert: Path | None = None, key: str | None = None):
        self.url = url
        self.headers = inference_key.grpc_headers(key)  # key None: $TRITONRAG_INFERENCE_KEY, if set
        if root_cert is None:
            self.client = grpcaio.InferenceServerClient(url)
        else:  # TLS: tritonserver started with --grpc-use-ssl
            self.client = grpcaio.InferenceServerClient(url, ssl=True, root_certificates=str(root_cert))
        self.models: dict[str, ModelInterface] = {}

    async def connect(self, names: tuple[str, ...], timeout: float = 600.0) -> None:
        """Wait for the server to be ready, then read each model's interface (its config)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                if await self.client.is_server_ready():
                    break
            except InferenceServerException:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"tritonserver at {self.url} not ready after {timeout:.0f} s")
            await asyncio.sleep(1.0)
        found = {}
        for name in names:
            try:
                config = await self.client.get_model_config(name, as_json=True)
            except InferenceServerException:
                continue  # not in this repository
            found[name] = ModelInterface.from_config(name, config)
        self.models = triton_map.served(found)

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready())
        except InferenceServerException:
            return False

    async def generate(self, model: ModelInterface, ask: Ask) -> AsyncIterator[Piece]:
        """Stream one generation's pieces until its end; an error ends it with an OpenAIError.

        Leaving the loop early (or the task being cancelled) cancels the Triton request.
        """
        request = {
            "model_name": model.name,
            "inputs": triton_map.generation_inputs(model, ask),
            "request_id": uuid.uuid4().hex,
        }

        async def one_request():
            yield request

        responses = self.client.stream_infer(one_request(), headers=self.headers)
        ended = False
        try:
            while True:
                try:
                    result, error = await responses.__anext__()
                except StopAsyncIteration:
                    ended = True
                    return
                if error is not None:
                    raise from_triton(error.message())
                if result is not None:
                    yield triton_map.read_piece(result)
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
        finally:
            if not ended:
                responses.cancel()  # left early (client gone, error): Triton cancels the request

    async def embed(self, model: ModelInterface, input_ids: np.ndarray) -> np.ndarray:
        """One text's embedding (the embedder batches concurrent requests itself)."""
        try:
            result = await self.client.infer(model.name, triton_map.embedding_inputs(input_ids), headers=self.headers)
        except InferenceServerException as exc:
            if RESTRICTED in (exc.message() or ""):
                raise _refused(exc.message()) from None
            error = from_triton(exc.message())
            if error.status == 400 and "UNAVAILABLE" in str(exc.status()):  # a unary call keeps its code
                error = _unavailable(exc.message())
            raise error from None
        return triton_map.read_embedding(result)

    async def close(self) -> None:
        await self.client.close()


def _refused(detail: str) -> OpenAIError:
    """tritonserver's inference is locked and this service's key is missing or wrong: its setup, not the caller's."""
    message = f"tritonserver refused this service's call (set {inference_key.INFERENCE_KEY_ENV}): {detail}"
    return OpenAIError(502, message, type="server_error", code="bad_gateway")


def _rpc_error(exc: grpc.RpcError) -> OpenAIError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if RESTRICTED in (detail or ""):
        return _refused(detail)
    if code == grpc.StatusCode.UNAVAILABLE:
        return _unavailable(detail or "cannot reach tritonserver")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return OpenAIError(429, f"The server is overloaded: {detail}", type="rate_limit_error", code="overloaded")
    return OpenAIError(502, f"tritonserver stream failed: {detail}", type="server_error", code="bad_gateway")
