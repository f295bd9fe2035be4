"""Triton adapter for first-stage retrieval (logic: tritonrag.retrieval.retriever).

The retriever polls the index home's CURRENT pointer (`reload_interval_s`) and swaps to a new
version built by `python -m tritonrag.retrieval.index_cli add|delete` without a restart.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.retrieval import stage_inputs
from tritonrag.retrieval.passages import hits_to_json
from tritonrag.retrieval.retriever import Retriever
from tritonrag.triton import io as triton_io


class TritonPythonModel:
    def initialize(self, args):
        params = triton_io.model_parameters(args)
        self.retriever = Retriever(
            triton_io.artifact_parameter(args, "index_dir"),
            use_gpu=params.get("use_gpu", "auto"),
            fusion=params.get("fusion", "wsum"),
            weight=float(params.get("fusion_weight", "0.3")),
            reload_interval_s=float(params.get("reload_interval_s", "1")) or None,
            on_swap=pb_utils.Logger.log_info,
        )
        self.candidates = int(params.get("rerank_candidates", "20"))
        meta = self.retriever.meta
        pb_utils.Logger.log_info(
            f"retriever: {self.retriever.version or 'plain folder'}, {len(self.retriever)} chunks, "
            f"index {meta['index']}, fusion {self.retriever.fusion}, {self.retriever.device}"
        )

    def execute(self, requests):
        """One search for the whole batch (dense + BM25 on the query texts), as deep as its largest top_k needs."""
        responses, parsed, indices = triton_io.valid_requests(requests, self._parse)
        if parsed:
            embeddings = np.concatenate([p[0] for p in parsed]).astype(np.float32)
            texts = [p[1] for p in parsed]
            depth = max(self.candidates, *(p[2] for p in parsed))
            try:
                hits = self.retriever.search(embeddings, depth, texts)
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: each request gets the error
                hits = exc
            for at, index in enumerate(indices):
                responses[index] = (
                    triton_io.error_response(hits)
                    if isinstance(hits, Exception)
                    else pb_utils.InferenceResponse(
                        [triton_io.bytes_tensor("candidates", hits_to_json(hits[at]), shape=(1, 1))]
                    )
                )
        return responses

    @staticmethod
    def _parse(request):
        embedding = pb_utils.get_input_tensor_by_name(request, "embedding").as_numpy().reshape(1, -1)
        text = triton_io.str_input(request, "query_text", required=False) or ""
        return embedding, text, stage_inputs.top_k(triton_io.int_input(request, "top_k", required=True))

    def finalize(self):
        self.retriever.close()
