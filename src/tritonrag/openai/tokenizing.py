"""The two tokenizers the service needs: the LLM's chat template, and the embedder's word pieces.

Chat messages become the LLM's prompt here, with the chat template shipped in the generator's
weights (the same files the engine loads), as OpenAI servers do; the LLM model takes the prompt as
given. The embedder model takes token ids, so `/v1/embeddings` tokenizes with the embedder's own
tokenizer, cut at its max length as the rag pipeline's preprocess step does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from tritonrag.defaults import EMBEDDER_MAX_TOKENS
from tritonrag.openai.errors import bad_request
from tritonrag.openai.protocol import ChatMessage


def message_text(message: ChatMessage) -> str:
    """A message's text: a string, or its text parts joined (any other part is refused)."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise bad_request(f"message content of type '{part.type}' is not supported (text only)", param="messages")
        texts.append(part.text)
    return "".join(texts)


class ChatTemplate:
    """The LLM's chat template over OpenAI messages (system, user, assistant turns)."""

    def __init__(self, weights_dir: Path):
        self.tokenizer = AutoTokenizer.from_pretrained(str(weights_dir))

    def prompt(self, messages: list[ChatMessage]) -> str:
        turns = []
        for message in messages:
            if message.role in ("tool", "function"):
                raise bad_request(f"messages with role '{message.role}' are not supported (no tools)", param="messages")
            role = "system" if message.role == "developer" else message.role
            turns.append({"role": role, "content": message_text(message)})
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


class EmbedderTokenizer:
    """Token ids for the embedder model, as the rag pipeline makes them."""

    def __init__(self, model_dir: Path, max_tokens: int = EMBEDDER_MAX_TOKENS):
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.max_tokens = max_tokens

    def ids(self, text: str) -> np.ndarray:
        encoded = self.tokenizer(text, truncation=True, max_length=self.max_tokens)
        return np.asarray(encoded["input_ids"], dtype=np.int64)
