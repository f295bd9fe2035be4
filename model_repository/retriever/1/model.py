"""Triton adapter for first-stage retrieval (logic: tritonrag.retrieval.retriever)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.retrieval.passages import hits_to_json
from tritonrag.retrieval.retriever import Retriever
from tritonrag.triton import io as triton_io


class TritonPythonModel:
    def initialize(self, args):
        params = triton_io.model_parameters(args)
        self.retriever = Retriever(
            triton_io.artifact_parameter(args, "index_dir"), use_gpu=params.get("use_gpu", "auto")
        )
        self.candidates = int(params.get("rerank_candidates", "20"))

    def execute(self, requests):
        """One FAISS search for the whole batch, as deep as its largest top_k needs."""
        embeddings = np.concatenate(
            [pb_utils.get_input_tensor_by_name(r, "embedding").as_numpy().reshape(1, -1) for r in requests]
        )
        top_ks = [triton_io.int_input(r, "top_k", required=True) for r in requests]
        depth = max(self.candidates, *top_ks)
        hits = self.retriever.search(embeddings.astype(np.float32), depth)
        return [
            pb_utils.InferenceResponse([triton_io.bytes_tensor("candidates", hits_to_json(h), shape=(1, 1))])
            for h in hits
        ]
