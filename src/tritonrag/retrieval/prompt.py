"""Prompt building: the generator's chat prompt with numbered passages, and the sources list."""

from __future__ import annotations

import json
from pathlib import Path

from tritonrag.defaults import MAX_PASSAGE_CHARS, SYSTEM_PROMPT


def format_context(passages: list[dict], max_chars: int = MAX_PASSAGE_CHARS) -> str:
    """Number the passages [1]..[n] so the answer can cite them."""
    blocks = []
    for number, passage in enumerate(passages, start=1):
        text = passage["text"]
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + " ..."
        blocks.append(f"[{number}] {passage['title']}\n{text}")
    return "\n\n".join(blocks)


def sources_of(passages: list[dict]) -> list[dict]:
    """What the client is told it was answered from: id, title and score, in citation order."""
    return [{"id": p["chunk_id"], "title": p["title"], "score": round(float(p["score"]), 4)} for p in passages]


class PromptBuilder:
    """Applies the generator's own chat template (from its tokenizer files) to query + passages."""

    def __init__(self, tokenizer_dir: str | Path, system_prompt: str = SYSTEM_PROMPT):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.system_prompt = system_prompt

    def messages(self, query: str, passages: list[dict]) -> list[dict]:
        context = format_context(passages)
        user = f"Sources:\n{context}\n\nQuestion: {query}" if passages else f"Question: {query}"
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    def build(self, query: str, passages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(
            self.messages(query, passages), tokenize=False, add_generation_prompt=True
        )

    def build_with_sources(self, query: str, passages: list[dict]) -> tuple[str, str]:
        return self.build(query, passages), json.dumps(sources_of(passages))
