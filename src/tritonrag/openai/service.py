"""What the routers share: the bridge to Triton, the served models, the tokenizers and the passage lookup."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from tritonrag.openai import triton_map
from tritonrag.openai.bridge import TritonBridge
from tritonrag.openai.errors import bad_request, unknown_model
from tritonrag.openai.protocol import now
from tritonrag.openai.sources import PassageLookup
from tritonrag.openai.tokenizing import ChatTemplate, EmbedderTokenizer
from tritonrag.paths import embedder_model_dir, generator_weights_dir, index_dir

ENDPOINT_KINDS = {"chat": ("llm", "rag"), "completions": ("llm", "rag"), "embeddings": ("embedding",)}


@dataclass
class Settings:
    """How the service is started (see `python -m tritonrag.openai --help`)."""

    triton_url: str = "127.0.0.1:8001"
    host: str = "127.0.0.1"
    port: int = 9000
    api_keys: tuple[str, ...] = ()
    generator_dir: Path = field(default_factory=generator_weights_dir)
    embedder_dir: Path | None = None  # None: the embedder's package (as the model repository's default)
    docstore: Path = field(default_factory=lambda: index_dir() / "docstore.sqlite")
    triton_root_cert: Path | None = None  # tritonserver's gRPC speaks TLS: what verifies its certificate
    ssl_certfile: Path | None = None  # serve HTTPS with this certificate and key (uvicorn's TLS)
    ssl_keyfile: Path | None = None


class Service:
    """Built once at start-up; the routers reach it as `request.app.state.service`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bridge = TritonBridge(settings.triton_url, settings.triton_root_cert)
        self.chat_template = ChatTemplate(settings.generator_dir)
        self.embedder_tokenizer = EmbedderTokenizer(settings.embedder_dir or embedder_model_dir())
        self.passages = PassageLookup(settings.docstore)
        self.created = now()

    async def start(self) -> None:
        await self.bridge.connect(triton_map.MODEL_NAMES)

    async def stop(self) -> None:
        await self.bridge.close()

    @property
    def model_ids(self) -> list[str]:
        return list(self.bridge.models)

    def model(self, name: str, endpoint: str) -> triton_map.ModelInterface:
        """The served model a request names: 404 if there is none, 400 if it does not serve this endpoint."""
        model = self.bridge.models.get(name)
        if model is None:
            raise unknown_model(name, self.model_ids)
        if model.kind not in ENDPOINT_KINDS[endpoint]:
            other = "/v1/embeddings" if model.kind == "embedding" else "/v1/chat/completions or /v1/completions"
            raise bad_request(f"'{name}' is a {model.kind} model: use {other}", param="model", code="wrong_endpoint")
        return model


def service_of(request: Request) -> Service:
    return request.app.state.service
