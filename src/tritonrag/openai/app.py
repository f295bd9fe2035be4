"""The OpenAI-compatible service in front of the Triton repository: the FastAPI app and its command line.

python -m tritonrag.openai [--triton-url 127.0.0.1:8001] [--host 127.0.0.1] [--port 9000] [--api-key KEY ...]

It talks to a running tritonserver over gRPC (tritonclient's asyncio client) and serves
`/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/health` and the web page
at `/`. `python -m tritonrag.triton.serve` starts it beside tritonserver.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from tritonrag.openai.auth import keys_from_env, require_key
from tritonrag.openai.errors import OpenAIError, http_error_handler, openai_error_handler, validation_error_handler
from tritonrag.openai.routers import chat, completions, embeddings, health, models, page
from tritonrag.openai.service import Service, Settings

log = logging.getLogger("tritonrag.openai")


def create_app(settings: Settings) -> FastAPI:
    """The app; the Service (tokenizers, Triton connection) is made when it starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(settings)
        await service.start()
        app.state.service = service
        log.info("serving %s from tritonserver %s", ", ".join(service.model_ids), settings.triton_url)
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="tritonrag OpenAI-compatible API", version="1", lifespan=lifespan)
    for router in (models.router, chat.router, completions.router, embeddings.router, health.router):
        app.include_router(router, dependencies=[Depends(require_key)])
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    app.add_exception_handler(OpenAIError, openai_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    return app


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Settings()
    parser.add_argument("--triton-url", default=defaults.triton_url, help="tritonserver's gRPC address")
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument(
        "--api-key", action="append", default=[], help="a key clients must send (repeatable; also TRITONRAG_API_KEYS)"
    )
    parser.add_argument("--generator-dir", type=Path, default=defaults.generator_dir, help="the LLM's chat template")
    parser.add_argument("--docstore", type=Path, default=defaults.docstore, help="passages for rag sources")
    parser.add_argument("--triton-root-cert", type=Path, default=None, help="tritonserver's gRPC is TLS: its root cert")
    parser.add_argument("--ssl-certfile", type=Path, default=None, help="serve HTTPS: certificate (with --ssl-keyfile)")
    parser.add_argument("--ssl-keyfile", type=Path, default=None, help="serve HTTPS: private key")
    args = parser.parse_args(argv)
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        parser.error("--ssl-certfile and --ssl-keyfile go together")
    return Settings(
        triton_url=args.triton_url,
        host=args.host,
        port=args.port,
        api_keys=tuple(args.api_key) + keys_from_env(),
        generator_dir=args.generator_dir,
        docstore=args.docstore,
        triton_root_cert=args.triton_root_cert,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_keep_alive=5,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
