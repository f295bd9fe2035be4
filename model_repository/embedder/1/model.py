"""Triton adapter for the query embedder (logic: tritonrag.retrieval.embedder)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.compile.runtime import pick_device
from tritonrag.defaults import EMBEDDER_MAX_TOKENS
from tritonrag.paths import embedder_model_dir
from tritonrag.retrieval import stage_inputs
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
        self.vocab_size = len(self.embedder.tokenizer)

    def execute(self, requests):
        """Check each request on its own (a bad one gets its own error), pad the rest to the longest, embed once."""
        responses, rows, indices = triton_io.valid_requests(requests, self._parse)
        if not rows:
            return responses
        width = max(ids.size for ids, _ in rows)
        input_ids = np.zeros((len(rows), width), dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, (ids, mask) in enumerate(rows):
            input_ids[i, : ids.size] = ids
            attention_mask[i, : mask.size] = mask
        try:
            embeddings = self.embedder.embed_tokens(input_ids, attention_mask)
        except Exception as exc:  # noqa: BLE001 - the batch's model call failed: each of its requests says so
            embeddings = exc
        for at, index in enumerate(indices):
            responses[index] = (
                triton_io.error_response(embeddings)
                if isinstance(embeddings, Exception)
                else pb_utils.InferenceResponse(
                    [pb_utils.Tensor("embedding", embeddings[at : at + 1].astype(np.float32))]
                )
            )
        return responses

    def _parse(self, request):
        return stage_inputs.token_row(
            pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy(),
            pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy(),
            self.vocab_size,
            EMBEDDER_MAX_TOKENS,
        )
