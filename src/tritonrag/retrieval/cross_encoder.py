"""A sentence-transformers CrossEncoder as one torch module: (query, passage) token ids -> score.

The reranker's torch runtime (tritonrag.retrieval.embedder.TorchRuntime) runs it and tritonrag.compile.onnx_export exports it, so both
compute one definition. Its own module so that tritonrag.retrieval.reranker (whose default scorers are
lexical) imports torch only when a CrossEncoder is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

PAIR_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pair_features(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> dict[str, np.ndarray]:
    """Token ids of (query, passage) pairs as CrossEncoder.predict makes them: int64 [B, L], longest-first cut."""
    encoded = tokenizer(
        [q for q, _ in pairs],
        [p for _, p in pairs],
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="np",
    )
    return {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items() if name in PAIR_INPUTS}


class CrossEncoderScore(torch.nn.Module):
    """A CrossEncoder's classifier logits through its activation, last label: one score per pair.

    The value CrossEncoder.predict returns (sigmoid for a one-label head; the existing
    scorer's "last label is relevant" rule for several). Inputs are what its tokenizer makes:
    input_ids, attention_mask, and token_type_ids for BERT-like models.
    """

    output_names = ("score",)

    def __init__(self, classifier: torch.nn.Module, activation, tokenizer, max_length: int) -> None:
        super().__init__()
        self.classifier, self.activation = classifier, activation
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        self.input_names = tuple(n for n in PAIR_INPUTS if n in tokenizer.model_input_names)
        self.activation_name = type(activation).__name__

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu") -> CrossEncoderScore:
        from sentence_transformers import CrossEncoder

        encoder = CrossEncoder(str(checkpoint), device=device)
        activation = encoder.activation_fn or torch.nn.Identity()
        return cls(encoder[0].auto_model, activation, encoder.tokenizer, encoder.max_seq_length).to(device).eval()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        logits = self.classifier(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # [B, labels]
        return (self.activation(logits)[:, -1],)  # [B]
