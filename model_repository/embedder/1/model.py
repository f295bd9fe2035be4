"""Triton adapter for the query embedder (logic: tritonrag.retrieval.embedder)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.compile.runtime import pick_device
from tritonrag.paths import embedder_model_dir
from tritonrag.retrieval.embedder import Embedder
from tritonrag.triton import io as triton_io


class TritonPythonModel:
    def initialize(self, args):
        """Pick the runtime (config `runtime`, `onnx_path`), log the choice and load it now, not on the first request."""
        params = triton_io.model_parameters(args)
        model_dir = embedder_model_dir(params["embedder_dir"], triton_io.repository_root(args))
        onnx_path = triton_io.artifact_parameter(args, "onnx_path") if params.get("onnx_path") else None
        try:
            self.embedder = Embedder(
                str(model_dir),
                device=pick_device(params.get("device", "auto")),
                runtime=params.get("runtime", "torch"),
                onnx_path=onnx_path,
            )
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"embedder: {exc}") from exc
        choice = self.embedder.runtime_choice
        (pb_utils.Logger.log_warn if choice.fell_back else pb_utils.Logger.log_info)(f"embedder: {choice.describe()}")
        self.embedder.runtime  # noqa: B018 - load the weights or the ONNX session now

    def execute(self, requests):
        """Pad the batch's token ids to its longest query, embed once, split per request."""
        rows = [
            (
                pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy().reshape(-1),
                pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy().reshape(-1),
            )
            for r in requests
        ]
        width = max(ids.size for ids, _ in rows)
        input_ids = np.zeros((len(rows), width), dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, (ids, mask) in enumerate(rows):
            input_ids[i, : ids.size] = ids
            attention_mask[i, : mask.size] = mask
        embeddings = self.embedder.embed_tokens(input_ids, attention_mask)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("embedding", embeddings[i : i + 1].astype(np.float32))])
            for i in range(len(rows))
        ]
