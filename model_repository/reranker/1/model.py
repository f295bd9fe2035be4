"""Triton adapter for the reranker (logic: tritonrag.retrieval.reranker)."""

import triton_python_backend_utils as pb_utils

from tritonrag.compile.runtime import pick_device
from tritonrag.retrieval.passages import hits_from_json, hits_to_json
from tritonrag.retrieval.reranker import Reranker
from tritonrag.triton import io as triton_io


class TritonPythonModel:
    def initialize(self, args):
        """Build the configured reranker; a neural one (CrossEncoder, MaxSim) logs its runtime choice."""
        params = triton_io.model_parameters(args)
        checkpoint = params.get("checkpoint", "").strip()
        if checkpoint:
            checkpoint = str(triton_io.artifact_parameter(args, "checkpoint"))
        onnx_path = triton_io.artifact_parameter(args, "onnx_path") if params.get("onnx_path") else None
        try:
            self.reranker = Reranker.from_config(
                checkpoint or None,
                device=pick_device(params.get("device", "auto")),
                runtime=params.get("runtime", "torch"),
                onnx_path=onnx_path,
            )
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"reranker: {exc}") from exc
        choice = self.reranker.runtime_choice
        if choice is None:
            pb_utils.Logger.log_info(f"reranker: {self.reranker.name} (lexical, runs no model: runtime unused)")
        else:
            log = pb_utils.Logger.log_warn if choice.fell_back else pb_utils.Logger.log_info
            log(f"reranker: {self.reranker.name}, {choice.describe()}")

    def execute(self, requests):
        """Rerank every request of the dynamic batch in one call."""
        queries = [triton_io.str_input(r, "query_text") for r in requests]
        candidates = [hits_from_json(triton_io.str_input(r, "candidates")) for r in requests]
        top_ks = [triton_io.int_input(r, "top_k", required=True) for r in requests]
        ranked = self.reranker.rerank_many(queries, candidates, max(top_ks))
        return [
            pb_utils.InferenceResponse([triton_io.bytes_tensor("passages", hits_to_json(hits[:k]), shape=(1, 1))])
            for hits, k in zip(ranked, top_ks)
        ]
