"""A tiny embedder-shaped ONNX graph for the TensorRT tests: cheap to export, real dynamic axes."""

from __future__ import annotations

from pathlib import Path

import torch


class TinyEncoder(torch.nn.Module):
    """An embedder in miniature: token embeddings, a projection, a masked mean over the sequence."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(100, 16)
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(self.proj.weight.dtype)
        states = self.proj(self.embed(input_ids)) * mask
        return states.sum(1) / mask.sum(1)


def export_tiny(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The tiny encoder as ONNX with named dynamic axes batch and seq (weights inside the file)."""
    import onnx

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    example = (torch.randint(0, 100, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    program = torch.onnx.export(
        TinyEncoder().to(dtype).eval(),
        example,
        input_names=["input_ids", "attention_mask"],
        output_names=["vector"],
        dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
        dynamo=True,
        opset_version=18,
        verbose=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path
