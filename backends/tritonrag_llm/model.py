"""tritonrag_llm: a Python-based Triton backend serving the tritonrag LLM engine, decoupled.

A model selects it with `backend: "tritonrag_llm"`. This file only adapts Triton to the
library: `execute` reads each request with vllm_backend's interface
(tritonrag.triton.vllm_interface) and hands it to the engine's loop thread
(tritonrag.engine.serving), whose deltas become Triton responses through the request's
response sender. Engine settings come from the model's config.pbtxt parameters. A request's
deadline is its Triton timeout when set (tritonclient's `timeout=`, or HTTP generate's `timeout`
parameter) and shorter than the version's `request_timeout_s`.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from tritonrag.compile.runtime import pick_device
from tritonrag.engine.factory import build_service, choose_runtime
from tritonrag.engine.serving import Completion
from tritonrag.sampling import SamplingParams
from tritonrag.triton import io as triton_io
from tritonrag.triton.custom_metrics import triton_family
from tritonrag.triton.engine_metrics import EngineMetrics
from tritonrag.triton.generator_config import engine_config, warmup_enabled
from tritonrag.triton.versioning import version_parameters
from tritonrag.triton.vllm_interface import LlmRequest, Piece, ResponseBuilder, read_request

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonSink:
    """Turns one request's deltas into Triton responses: each delta streamed, or one response at the end."""

    def __init__(self, request, sender, llm_request: LlmRequest, sources: bytes | None, num_input_tokens: int = 0):
        self.request = request
        self.sender = sender
        self.llm_request = llm_request
        self.builder = ResponseBuilder(llm_request)
        self.sources = sources
        self.num_input_tokens = num_input_tokens  # for streamed responses; the end reports the engine's count
        self.pending_text: list[str] = []
        self.pending_logprobs: list | None = None

    def _send(self, piece: Piece, flags: int = 0, prefix: str = "") -> None:
        outputs = [pb_utils.Tensor(name, array) for name, array in self.builder.outputs(piece, prefix).items()]
        if self.sources is not None:
            outputs.append(triton_io.bytes_tensor("sources", self.sources))
            self.sources = b""  # sent once; later responses carry an empty placeholder
        self.sender.send(pb_utils.InferenceResponse(output_tensors=outputs), final=flags == FINAL)

    def send_delta(self, text: str, logprobs: list | None = None) -> None:
        if self.llm_request.stream:
            self._send(Piece(text, len(logprobs or ()), logprobs, num_input_tokens=self.num_input_tokens))
            return
        self.pending_text.append(text)
        if logprobs is not None:
            self.pending_logprobs = (self.pending_logprobs or []) + list(logprobs)

    def finish(self, text: str, completion: Completion, logprobs: list | None = None) -> None:
        piece = Piece(
            text,
            len(logprobs or ()),
            logprobs,
            completion.finish_reason,
            completion.num_prompt_tokens,
            completion.num_cached_tokens,
        )
        prefix = ""
        if not self.llm_request.stream:  # the one response: the whole text, the prompt first if asked
            piece.text = "".join(self.pending_text) + text
            if logprobs is not None or self.pending_logprobs is not None:
                piece.logprobs = (self.pending_logprobs or []) + list(logprobs or ())
            piece.num_tokens = completion.num_output_tokens
            prefix = self.llm_request.prompt if self.llm_request.prepend_input else ""
        self._send(piece, FINAL, prefix)

    def fail(self, error: Exception) -> None:
        self.sender.fail(error)

    def is_cancelled(self) -> bool:
        # After FINAL Triton may release the request: never touch it again (a use after free in the backend).
        return self.sender.closed or self.sender.cancelled()


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.set_model_transaction_policy({"decoupled": True})
        return auto_complete_model_config

    def initialize(self, args):
        if not pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"])):
            raise pb_utils.TritonModelException("tritonrag_llm needs `model_transaction_policy { decoupled: true }`")
        # This version's view: shared parameters overridden by its own `v<N>:<key>` ones.
        params, version = triton_io.model_parameters(args), args["model_version"]
        own = version_parameters(params, version)
        if "model_dir" not in own:
            raise pb_utils.TritonModelException("config.pbtxt parameter 'model_dir' is missing")
        try:
            device = pick_device(own.get("device", "auto"))
            config = engine_config(params, version, triton_io.repository_root(args), device=device)
        except ValueError as exc:  # an unknown or malformed parameter: refuse to load, saying which
            raise pb_utils.TritonModelException(f"generator version {version}: {exc}") from exc
        name = f"tritonrag_llm {args['model_name']} version {args['model_version']}"
        pb_utils.Logger.log_info(f"{name}: {config}")
        choice = choose_runtime(config)
        log = pb_utils.Logger.log_warn if choice.fell_back else pb_utils.Logger.log_info
        log(f"{name}: {choice.describe()}")
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.observer = EngineMetrics(labels, triton_family(pb_utils))
        self.service = build_service(config, observer=self.observer, choice=choice)
        if self.service.engine.clamp_reason:  # the config asked for more than its KV pool holds
            pb_utils.Logger.log_warn(f"{name}: {self.service.engine.clamp_reason}")
        if warmup_enabled(params, version):
            self.service.warmup()

    def execute(self, requests):
        for request in requests:
            sender = triton_io.StreamSender(request)  # one FINAL, nothing after it, never raises
            try:
                self._submit(request, sender)
            except Exception as exc:  # noqa: BLE001 - that request's error; the server keeps serving
                sender.fail(exc)
        return None

    def _submit(self, request, sender) -> None:
        llm_request = read_request(triton_io.input_reader(request), request.parameters())
        sampling = SamplingParams.from_dict(llm_request.engine_sampling())
        num_input_tokens = 0
        if llm_request.stream and "num_input_tokens" in llm_request.returns:  # every streamed response carries it
            num_input_tokens = len(self.service.tokenizer(llm_request.prompt)["input_ids"])
        sources = triton_io.bytes_input(request, "sources", required=False)
        sink = TritonSink(request, sender, llm_request, sources, num_input_tokens)
        timeout_us = llm_request.client_timeout_us(request.timeout())  # 0: none, the engine's default applies
        timeout_s = timeout_us / 1e6 if timeout_us else None
        self.service.submit(request.request_id() or "", llm_request.prompt, sampling, sink, timeout_s)

    def finalize(self):
        self.service.shutdown()
        self.observer.close()
