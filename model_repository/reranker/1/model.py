"""Triton adapter for the reranker (logic: tritonrag.retrieval.reranker)."""

import triton_python_backend_utils as pb_utils

from tritonrag.compile.runtime import pick_device
from tritonrag.retrieval import stage_inputs
from tritonrag.retrieval.passages import hits_to_json
from tritonrag.retrieval.query import normalize_query
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
        """Check each request on its own (a bad one gets its own error), rerank the rest in one call."""
        responses, parsed, indices = triton_io.valid_requests(requests, self._parse)
        if not parsed:
            return responses
        queries, candidates, top_ks = zip(*parsed)
        try:
            ranked = self.reranker.rerank_many(list(queries), list(candidates), max(top_ks))
        except Exception as exc:  # noqa: BLE001 - the batch's scorer call failed: each of its requests says so
            ranked = exc
        for at, index in enumerate(indices):
            responses[index] = (
                triton_io.error_response(ranked)
                if isinstance(ranked, Exception)
                else pb_utils.InferenceResponse(
                    [triton_io.bytes_tensor("passages", hits_to_json(ranked[at][: top_ks[at]]), shape=(1, 1))]
                )
            )
        return responses

    @staticmethod
    def _parse(request):
        return (
            normalize_query(triton_io.bytes_input(request, "query_text")),
            stage_inputs.candidates(triton_io.str_input(request, "candidates")),
            stage_inputs.top_k(triton_io.int_input(request, "top_k", required=True)),
        )
