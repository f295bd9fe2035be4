"""The Triton side of the OpenAI service, written once: which models, the tensors sent, the outputs read.

Everything that depends on the model repository's interface is here, so that a change of a model's
name, inputs or outputs is an edit of this file alone. The routers and the page speak OpenAI; the
bridge moves tensors; this module turns one into the other.

Three models serve the OpenAI ids (the ids are the Triton model names, from tritonrag.defaults):
- the LLM (`llm`, vllm_backend's interface, names from tritonrag.triton.vllm_interface):
  `text_input` (the prompt as given; chat messages are templated in the service),
  `sampling_parameters` (JSON, tritonrag.sampling's keys), `stream`, `exclude_input_in_output` and
  the `return_<output>` flags for `finish_reason`, `num_input_tokens`, `num_output_tokens` (and
  `logprobs` when asked); it answers with `text_output` deltas. A flag is set only when the model
  declares it, read from its config at start-up (`ModelInterface`), so the service follows the
  model's interface rather than guessing it.
- `rag` (the ensemble): `query` (the last user message), optional `top_k`, `sampling_parameters`;
  `text_output` deltas, `sources` (JSON list of `{id, title, score}`) with the first response, and
  the finish and token counts when the ensemble passes them on.
- the embedder: `input_ids` + `attention_mask` (INT64, one row; tokenized in the service with the
  embedder's tokenizer), `embedding` (FP32, 384).

Token counts are summed over responses: a model that reports them only in its final response (the
total) and one that reports each response's own tokens (vllm_backend's `num_output_tokens`) both
sum to the request's count. A finish reason of "None" (vllm_backend's value before the end) is no end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient

from tritonrag.defaults import EMBEDDER_MAX_TOKENS, EMBEDDING_DIM, ENSEMBLE_MODEL, LLM_MODEL
from tritonrag.triton import vllm_interface as vllm

# Model names: the public LLM (routes to the generator's stable version), the rag ensemble, the embedder.
LLM_MODELS = (LLM_MODEL,)
RAG_MODEL = ENSEMBLE_MODEL
EMBEDDER_MODEL = "embedder"
MODEL_NAMES = (*LLM_MODELS, RAG_MODEL, EMBEDDER_MODEL)

# The LLM's inputs and outputs (vllm_backend's names); rag's own inputs; the embedder's tensors.
TEXT_INPUT, SAMPLING_PARAMETERS = vllm.TEXT_INPUT.name, vllm.SAMPLING_PARAMETERS.name
STREAM, EXCLUDE_INPUT = vllm.STREAM.name, vllm.EXCLUDE_INPUT.name
TEXT_OUTPUT, FINISH_REASON, _CUMULATIVE, LOGPROBS, NUM_INPUT_TOKENS, NUM_OUTPUT_TOKENS = (t.name for t in vllm.OUTPUTS)
SOURCES = vllm.SOURCES_OUTPUT.name
QUERY, TOP_K = "query", "top_k"
INPUT_IDS, ATTENTION_MASK, EMBEDDING = "input_ids", "attention_mask", "embedding"
# Outputs the service asks for with vllm_backend's `return_<output>` flags, where the model has them.
WANTED = (FINISH_REASON, NUM_INPUT_TOKENS, NUM_OUTPUT_TOKENS)
NOT_FINISHED = ("", "None")

MODEL_KINDS = {**{name: "llm" for name in LLM_MODELS}, RAG_MODEL: "rag", EMBEDDER_MODEL: "embedding"}
EMBEDDER_LIMITS = {"max_tokens": EMBEDDER_MAX_TOKENS, "dim": EMBEDDING_DIM}


@dataclass(frozen=True)
class ModelInterface:
    """A served model's declared input and output names (from its config), and what follows from them."""

    name: str
    inputs: frozenset[str]
    outputs: frozenset[str]

    @classmethod
    def from_config(cls, name: str, config: dict) -> ModelInterface:
        """From tritonclient's `get_model_config(..., as_json=True)` (which wraps it in `config`)."""
        config = config.get("config", config)
        names = lambda key: frozenset(t["name"] for t in config.get(key, []))  # noqa: E731
        return cls(name, names("input"), names("output"))

    @property
    def kind(self) -> str:
        return MODEL_KINDS[self.name]

    @property
    def returns_logprobs(self) -> bool:
        return LOGPROBS in self.outputs and f"return_{LOGPROBS}" in self.inputs


def served(found: dict[str, ModelInterface]) -> dict[str, ModelInterface]:
    """The models the service offers, from those the server has: one LLM (the first of LLM_MODELS), rag, the embedder."""
    llm = next((name for name in LLM_MODELS if name in found), None)
    return {name: model for name, model in found.items() if name not in LLM_MODELS or name == llm}


@dataclass
class Ask:
    """One generation as the service asks it: the text, the sampling keys, for rag the passages wanted."""

    text: str
    sampling: dict = field(default_factory=dict)
    passages: int | None = None

    @property
    def wants_logprobs(self) -> bool:
        return self.sampling.get("logprobs") is not None


@dataclass(frozen=True)
class TopToken:
    token: str
    logprob: float


@dataclass(frozen=True)
class PositionLogprob:
    """One generated token's logprob and the most likely alternatives at its position."""

    token: str
    logprob: float
    top: tuple[TopToken, ...] = ()


@dataclass
class Piece:
    """What one Triton response said, in the service's terms."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    sources: list[dict] | None = None
    logprobs: list[PositionLogprob] | None = None


# ---- requests ---------------------------------------------------------------------------------


def generation_inputs(model: ModelInterface, ask: Ask) -> list[grpcclient.InferInput]:
    """The input tensors of one streamed generation on `model` (the LLM or rag)."""
    sampling = _bytes(SAMPLING_PARAMETERS, json.dumps(ask.sampling))
    if model.name == RAG_MODEL:
        inputs = [_bytes(QUERY, ask.text), sampling]
        if ask.passages is not None:
            inputs.append(_int32(TOP_K, ask.passages))
        return inputs
    inputs = [_bytes(TEXT_INPUT, ask.text), sampling, _bool(STREAM, True)]
    if EXCLUDE_INPUT in model.inputs:
        inputs.append(_bool(EXCLUDE_INPUT, True))
    wanted = list(WANTED) + ([LOGPROBS] if ask.wants_logprobs else [])
    inputs += [_bool(f"return_{name}", True) for name in wanted if f"return_{name}" in model.inputs]
    return inputs


def embedding_inputs(input_ids: np.ndarray) -> list[grpcclient.InferInput]:
    """One text's token ids as the embedder's batch of one (its attention mask all ones)."""
    ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
    return [_tensor(INPUT_IDS, ids, "INT64"), _tensor(ATTENTION_MASK, np.ones_like(ids), "INT64")]


def _tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _bytes(name: str, value: str) -> grpcclient.InferInput:
    return _tensor(name, np.array([value.encode("utf-8")], dtype=np.object_), "BYTES")


def _bool(name: str, value: bool) -> grpcclient.InferInput:
    return _tensor(name, np.array([value], dtype=bool), "BOOL")


def _int32(name: str, value: int) -> grpcclient.InferInput:
    return _tensor(name, np.array([value], dtype=np.int32), "INT32")


# ---- responses --------------------------------------------------------------------------------


def read_piece(result) -> Piece:
    """One streamed response (a tritonclient InferResult) as a Piece."""
    names = {output.name for output in result.get_response().outputs}
    piece = Piece()
    if TEXT_OUTPUT in names:
        piece.text = "".join(item.decode("utf-8") for item in result.as_numpy(TEXT_OUTPUT).reshape(-1))
    if SOURCES in names:
        raw = result.as_numpy(SOURCES).reshape(-1)
        piece.sources = json.loads(raw[0]) if raw.size and raw[0] else None
    if FINISH_REASON in names:
        reason = result.as_numpy(FINISH_REASON).reshape(-1)
        value = reason[0].decode("utf-8") if reason.size else ""
        piece.finish_reason = None if value in NOT_FINISHED else value
    if NUM_INPUT_TOKENS in names:
        piece.prompt_tokens = int(result.as_numpy(NUM_INPUT_TOKENS).reshape(-1)[0])
    if NUM_OUTPUT_TOKENS in names:
        piece.completion_tokens = int(result.as_numpy(NUM_OUTPUT_TOKENS).reshape(-1).sum())
    if LOGPROBS in names:
        raw = result.as_numpy(LOGPROBS).reshape(-1)
        piece.logprobs = parse_logprobs(raw[0].decode("utf-8")) if raw.size else None
    return piece


def parse_logprobs(raw: str) -> list[PositionLogprob] | None:
    """vllm_backend's `logprobs` JSON: per position `{token id: {logprob, rank, decoded_token}}`,
    the sampled token first (JSON keeps the order), then the top alternatives by rank."""
    positions = json.loads(raw)
    if positions is None:
        return None
    out = []
    for position in positions:
        entries = list(position.values())
        if not entries:
            continue
        sampled = entries[0]
        ranked = sorted(entries, key=lambda e: e.get("rank", 0))
        top = tuple(TopToken(e["decoded_token"], float(e["logprob"])) for e in ranked)
        out.append(PositionLogprob(sampled["decoded_token"], float(sampled["logprob"]), top))
    return out


def read_embedding(result) -> np.ndarray:
    return result.as_numpy(EMBEDDING).reshape(-1).astype(np.float32)
