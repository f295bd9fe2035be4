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


ZERO_WIDTH_SPACE = "\u200b"


def neutralize(text: str, specials: list[str]) -> str:
    """Break every special-token text (`<|im_end|>`) with a zero-width space after its first character,
    so the tokenizer reads it as plain characters: a query or a passage cannot end its turn or forge
    another (a chat-template injection). Longest first, so one special inside another is handled."""
    for special in specials:
        if special and special in text:
            text = text.replace(special, special[0] + ZERO_WIDTH_SPACE + special[1:])
    return text


class PromptBuilder:
    """Applies the generator's own chat template (from its tokenizer files) to query + passages."""

    def __init__(self, tokenizer_dir: str | Path, system_prompt: str = SYSTEM_PROMPT):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.system_prompt = system_prompt
        # Every token the tokenizer reads as one control token when its text appears (<|im_end|>, ...).
        self.specials = sorted(
            {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
            | set(self.tokenizer.all_special_tokens),
            key=len,
            reverse=True,
        )

    def messages(self, query: str, passages: list[dict]) -> list[dict]:
        """The chat turns; the query's and the passages' text cannot hold a control token (see neutralize)."""
        query = neutralize(query, self.specials)
        passages = [
            {**p, "text": neutralize(p["text"], self.specials), "title": neutralize(p["title"], self.specials)}
            for p in passages
        ]
        context = format_context(passages)
        user = f"Sources:\n{context}\n\nQuestion: {query}" if passages else f"Question: {query}"
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    def build(self, query: str, passages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(
            self.messages(query, passages), tokenize=False, add_generation_prompt=True
        )

    def build_with_sources(self, query: str, passages: list[dict]) -> tuple[str, str]:
        return self.build(query, passages), json.dumps(sources_of(passages))
