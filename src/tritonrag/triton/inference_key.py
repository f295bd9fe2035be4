"""The inference key, an option: Triton's inference APIs answer only callers that send it in a header.

Off unless $TRITONRAG_INFERENCE_KEY is set (or `TritonServer(inference_key=...)`). Then tritonserver
2.51 restricts its `inference` group (HTTP `infer`, `generate`, `generate_stream`; gRPC `ModelInfer`,
`ModelStreamInfer`) to requests whose header `tritonrag-inference-key` (gRPC metadata with Triton's
prefix, `triton-grpc-protocol-tritonrag-inference-key`) holds the key. Health, metadata, model config
and statistics stay open: probes, and clients that read a model's interface before they call it.
A call without the key, measured on 2.51: HTTP 403, gRPC UNAVAILABLE (a stream is refused as it opens),
"This API is restricted, expecting header ..." / "This protocol is restricted, expecting header ...".

Every caller of ours reads the key from the same variable, so one setting covers them all: the `llm`
router's loopback (the key reaches its stub through tritonserver's environment), the OpenAI service,
the ask CLI and `StreamingClient`, the soak. The key travels in environments and headers, never in our
own command lines (`ps` shows those); tritonserver 2.51 takes it only as a flag, so its own argv holds it.
"""

from __future__ import annotations

import os

INFERENCE_KEY_ENV = "TRITONRAG_INFERENCE_KEY"
INFERENCE_HEADER = "tritonrag-inference-key"  # lower case: gRPC metadata keys are
INFERENCE_APIS = ("inference",)  # Triton's restricted group: infer, generate, generate_stream, (stream) infer
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton matches restricted gRPC metadata under this prefix


def inference_key(env_name: str = INFERENCE_KEY_ENV) -> str | None:
    """The key in the environment (None: unset or empty, inference open)."""
    return os.environ.get(env_name) or None


def grpc_headers(key: str | None = None) -> dict[str, str] | None:
    """gRPC metadata that carries `key` (None: the environment's; "": none); None when there is no key."""
    key = key if key is not None else inference_key()
    return {GRPC_HEADER_PREFIX + INFERENCE_HEADER: key} if key else None


def http_headers(key: str | None = None) -> dict[str, str]:
    """HTTP headers that carry `key` (None: the environment's; "": none); empty when there is no key."""
    key = key if key is not None else inference_key()
    return {INFERENCE_HEADER: key} if key else {}


def restricted_rule(apis: tuple[str, ...], header: str, key: str) -> str:
    """Triton's `--http-restricted-api` / `--grpc-restricted-protocol` value: `<apis>:<header>=<key>`."""
    return f"{','.join(apis)}:{header}={key}"
