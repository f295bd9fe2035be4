"""GET /v1/models and /v1/models/{id}: the LLM, `rag` and the embedder, as the Triton server has them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tritonrag.openai.errors import unknown_model
from tritonrag.openai.protocol import ModelCard, ModelList
from tritonrag.openai.service import Service, service_of

router = APIRouter()


def card(service: Service, name: str) -> ModelCard:
    return ModelCard(id=name, created=service.created, kind=service.bridge.models[name].kind)


@router.get("/v1/models")
async def list_models(request: Request):
    service = service_of(request)
    return ModelList(data=[card(service, name) for name in service.model_ids]).dump()


@router.get("/v1/models/{model_id}")
async def retrieve_model(model_id: str, request: Request):
    service = service_of(request)
    if model_id not in service.bridge.models:
        raise unknown_model(model_id, service.model_ids)
    return card(service, model_id).dump()
