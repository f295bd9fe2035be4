"""GET /health: 200 while tritonserver is ready, 503 otherwise (for a start-up script or a load balancer)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tritonrag.openai.service import service_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ready = await service_of(request).bridge.ready()
    return JSONResponse({"status": "ok" if ready else "unavailable"}, status_code=200 if ready else 503)
