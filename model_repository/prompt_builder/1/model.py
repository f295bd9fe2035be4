"""Triton adapter for prompt building (logic: tritonrag.retrieval.prompt)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.retrieval.prompt import PromptBuilder
from tritonrag.triton import io as triton_io


class TritonPythonModel:
    def initialize(self, args):
        self.builder = PromptBuilder(triton_io.artifact_parameter(args, "tokenizer_dir"))

    def execute(self, requests):
        return triton_io.respond_each(requests, self.build)

    def build(self, request):
        query = triton_io.str_input(request, "query_text")
        passages = json.loads(triton_io.str_input(request, "passages"))
        prompt, sources = self.builder.build_with_sources(query, passages)
        # The LLM's `stream` flag (vllm_backend's default is false): rag always streams its answer.
        stream = pb_utils.Tensor("stream", np.array([True]))
        return [triton_io.bytes_tensor("text_input", prompt), triton_io.bytes_tensor("sources", sources), stream]
