"""Shapes, names and defaults of the pipeline: the one place they are written down.

The config.pbtxt files repeat some of these numbers (Triton reads them there);
tests/test_repository.py checks that both agree.
"""

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
EMBEDDER_MAX_TOKENS = 256  # MiniLM's max_seq_length
MAX_QUERY_CHARS = 2000  # longer queries are rejected with INVALID_ARG
MAX_QUERY_BYTES = 4 * MAX_QUERY_CHARS  # checked before decoding (UTF-8 is at most 4 bytes a character)
MAX_PROMPT_BYTES = 64 * 1024  # an LLM prompt (text_input), checked before tokenizing
DEFAULT_TOP_K = 3  # passages given to the generator
MAX_TOP_K = 10
RERANK_CANDIDATES = 20  # first-stage hits handed to the reranker
MAX_PASSAGE_CHARS = 1200  # a passage is cut to this in the prompt
# A generation's deadline, in seconds from when the generator takes the request (its time in the
# engine's queue counts): past it the engine ends the sequence, frees its KV blocks and fails the
# request UNAVAILABLE ("deadline exceeded"). A client's Triton timeout may shorten it, not extend it.
REQUEST_TIMEOUT_S = 300.0
# An engine loop with work and no finished iteration for this long is stalled (tritonrag.engine.liveness):
# far above the longest step seen (a 512-token prefill chunk under load ~30 on 2 cores took seconds).
STALL_TIMEOUT_S = 120.0
# Model names. `llm` is the public LLM (vllm_backend's interface): it routes each request to a
# `generator` version, the stable one unless the canary weights or a pin say otherwise. `generator`
# (versions 1 and 2) is internal: Triton sends an unversioned request to its highest version, the canary.
LLM_MODEL = "llm"
GENERATOR_MODEL = "generator"
ENSEMBLE_MODEL = "rag"
SYSTEM_PROMPT = (
    "You answer questions about Python using the numbered sources given. "
    "Cite sources as [1], [2]. If the sources do not contain the answer, say so."
)

# libgomp's spin-wait between parallel regions (torch's CPU wheel), set for every process that imports
# tritonrag before torch (tritonrag/__init__.py) unless the environment sets it. Its default, 300,000
# spins, is fastest while the engine has its cores to itself, and collapses when they are shared: with a
# load tool and the serving pipeline on the same 2 cores, a c=1 stream's inter-token p50 was 797 ms
# (3,000 spins: 70 ms; 0: 53 ms). 3,000 keeps a quiet batch-1 decode step at ~18.5 ms (default 17.3).
# docs/bench/2026-12-01-thread-ownership.md has the measurements.
GOMP_SPINCOUNT = "3000"

# Floating-point types, by one set of names everywhere (engine dtype, ONNX export, TensorRT precision).
DTYPES = ("float32", "bfloat16", "float16")

# The scheduler's orders for prefill work (EngineConfig.prefill_order).
PREFILL_FCFS, PREFILL_SHORTEST = "fcfs", "shortest"
PREFILL_ORDERS = (PREFILL_FCFS, PREFILL_SHORTEST)
