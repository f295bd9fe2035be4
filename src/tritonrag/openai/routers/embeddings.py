"""POST /v1/embeddings: the embedder model (all-MiniLM-L6-v2, 384 floats, normalised), one text per request to Triton.

The texts of one call go to Triton concurrently, and the embedder's dynamic batching runs them as
one batch. Texts longer than the embedder's 256 tokens are cut, as the rag pipeline does.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import APIRouter, Request

from tritonrag.openai.errors import bad_request
from tritonrag.openai.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, Usage
from tritonrag.openai.service import service_of
from tritonrag.openai.streaming import unless_disconnected
from tritonrag.openai.triton_map import EMBEDDER_LIMITS

router = APIRouter()
MAX_INPUTS = 256


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request):
    service = service_of(request)
    model = service.model(body.model, "embeddings")
    texts = input_texts(body)
    if body.dimensions is not None and body.dimensions != EMBEDDER_LIMITS["dim"]:
        raise bad_request(f"dimensions must be {EMBEDDER_LIMITS['dim']} for '{model.name}'", param="dimensions")
    ids = [service.embedder_tokenizer.ids(text) for text in texts]
    work = asyncio.gather(*(service.bridge.embed(model, row) for row in ids))
    vectors = await unless_disconnected(work, request)
    data = [EmbeddingData(index=i, embedding=encode(v, body.encoding_format)) for i, v in enumerate(vectors)]
    tokens = sum(int(row.size) for row in ids)
    usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingResponse(data=data, model=model.name, usage=usage).dump()


def input_texts(body: EmbeddingRequest) -> list[str]:
    """A string or a list of strings; token-id inputs are refused (the embedder's tokenizer is not OpenAI's)."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(text, str) for text in texts):
        raise bad_request("input must be a non-empty string or list of strings (token ids are not supported)", "input")
    if any(not text for text in texts):
        raise bad_request("input must not contain empty strings", param="input")
    if len(texts) > MAX_INPUTS:
        raise bad_request(f"input holds {len(texts)} texts; the limit is {MAX_INPUTS}", param="input")
    return texts


def encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
