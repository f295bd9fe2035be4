"""Triton adapter for query preprocessing (logic: tritonrag.retrieval.query, tritonrag.sampling)."""

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from tritonrag.defaults import EMBEDDER_MAX_TOKENS
from tritonrag.paths import embedder_model_dir
from tritonrag.retrieval.query import normalize_query, resolve_top_k
from tritonrag.sampling import SamplingParams
from tritonrag.triton import io as triton_io


class TritonPythonModel:
    def initialize(self, args):
        params = triton_io.model_parameters(args)
        model_dir = embedder_model_dir(params["embedder_dir"], triton_io.repository_root(args))
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def execute(self, requests):
        return triton_io.respond_each(requests, self.preprocess)

    def preprocess(self, request):
        query = normalize_query(triton_io.bytes_input(request, "query"))
        top_k = resolve_top_k(triton_io.int_input(request, "top_k"))
        sampling = SamplingParams.from_json(triton_io.bytes_input(request, "sampling_parameters", required=False))
        tokens = self.tokenizer([query], truncation=True, max_length=EMBEDDER_MAX_TOKENS, return_tensors="np")
        return [
            triton_io.bytes_tensor("query_text", query),
            pb_utils.Tensor("input_ids", tokens["input_ids"].astype(np.int64)),
            pb_utils.Tensor("attention_mask", tokens["attention_mask"].astype(np.int64)),
            pb_utils.Tensor("top_k", np.array([top_k], dtype=np.int32)),
            triton_io.bytes_tensor("sampling_parameters", sampling.to_json()),
        ]
