"""Passages on the wire between pipeline stages: retrieval hits as JSON, and back."""

from __future__ import annotations

import dataclasses
import json

from tritonrag.retrieval.docstore import Passage
from tritonrag.retrieval.retriever import Hit


def hits_to_json(hits) -> str:
    """[Hit(passage, score)] -> JSON list of passage fields plus `score`."""
    return json.dumps([{**dataclasses.asdict(hit.passage), "score": float(hit.score)} for hit in hits])


def hits_from_json(raw: str):
    names = {f.name for f in dataclasses.fields(Passage)}
    return [
        Hit(passage=Passage(**{k: v for k, v in item.items() if k in names}), score=item["score"])
        for item in json.loads(raw)
    ]
