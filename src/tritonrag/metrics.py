"""Metric names: the one place every family on Triton's /metrics endpoint is named.

The backend and the router register these families; the canary CLI, the benchmark and the
tests read them back by the same constants, so a rename happens here or nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


@dataclass(frozen=True)
class Family:
    """One metric family: its Prometheus name, kind and help text."""

    name: str
    kind: str
    doc: str
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds; empty: LATENCY_BUCKETS


# Engine (backends/tritonrag_llm), labelled by model and version; named after vLLM's where the meaning is the same.
TTFT = Family("tritonrag_time_to_first_token_seconds", HISTOGRAM, "Time to first token")
ITL = Family("tritonrag_inter_token_latency_seconds", HISTOGRAM, "Time between streamed tokens")
E2E = Family("tritonrag_e2e_request_latency_seconds", HISTOGRAM, "End-to-end request latency")
RUNNING = Family("tritonrag_num_requests_running", GAUGE, "Sequences in the running batch")
WAITING = Family("tritonrag_num_requests_waiting", GAUGE, "Requests waiting to be scheduled")
KV_USAGE = Family("tritonrag_kv_cache_usage_perc", GAUGE, "Fraction of KV cache blocks in use")
PREFIX_HIT_RATE = Family("tritonrag_prefix_cache_hit_rate", GAUGE, "Prefix cache hits / queries, in tokens")
PREEMPTIONS = Family("tritonrag_num_preemptions_total", COUNTER, "Sequences preempted")
PROMPT_TOKENS = Family("tritonrag_prompt_tokens_total", COUNTER, "Prompt tokens processed")
GENERATION_TOKENS = Family("tritonrag_generation_tokens_total", COUNTER, "Tokens generated")
REQUEST_SUCCESS = Family("tritonrag_request_success_total", COUNTER, "Finished requests by reason")
# Not a finish reason: a request past its deadline fails (UNAVAILABLE, "deadline exceeded"), so it is counted apart.
REQUEST_TIMEOUTS = Family(
    "tritonrag_request_timeouts_total",
    COUNTER,
    "Requests failed by their deadline (the client's timeout or request_timeout_s), waiting or running",
)
# The batch shapes continuous batching claims (tests/server/test_batching.py reads them through a server).
ENGINE_STALLED = Family(
    "tritonrag_engine_stalled", GAUGE, "1 while the engine loop has work and makes no progress (stall_timeout_s)"
)
ENGINE_STEPS = Family("tritonrag_engine_steps_total", COUNTER, "Engine steps that computed tokens")
MIXED_STEPS = Family(
    "tritonrag_mixed_steps_total", COUNTER, "Engine steps that computed prefill chunks beside decode rows"
)
PARTIAL_PREFILL_CHUNKS = Family(
    "tritonrag_partial_prefill_chunks_total",
    COUNTER,
    "Prefill chunks that stopped short of their sequence's end (chunked prefill: the rest comes in later steps)",
)

ENGINE_FAMILIES = (
    TTFT,
    ITL,
    E2E,
    RUNNING,
    WAITING,
    KV_USAGE,
    PREFIX_HIT_RATE,
    PREEMPTIONS,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    REQUEST_SUCCESS,
    REQUEST_TIMEOUTS,
    ENGINE_STALLED,
    ENGINE_STEPS,
    MIXED_STEPS,
    PARTIAL_PREFILL_CHUNKS,
)
# Neighbouring bounds at most 1.5x apart from 50 ms to 30 s: the rollout's latency guards compare p95s
# interpolated within buckets (tritonrag.triton.guards), and 1-2.5-5 buckets moved a p95 by up to 2.5x.
LATENCY_BUCKETS = (
    *(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75),
    *(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0),
)

# The same engine, under the names vllm_backend exports (src/utils/metrics.py there), so that
# dashboards built for vLLM on Triton read ours: same names, kinds, buckets and labels (model,
# version). Prometheus allows ':' in names and Triton 2.51's custom metrics accept it
# (tests/server/test_llm.py reads them back). `gpu_cache_usage_perc` is vllm_backend's name and
# `kv_cache_usage_perc` vLLM v1's; both report the KV cache blocks in use, on any device.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)  # vLLM's 1-2-5 series
_STEP_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
VLLM_TTFT = Family("vllm:time_to_first_token_seconds", HISTOGRAM, "Time to first token in seconds", _TTFT_BUCKETS)
VLLM_TPOT = Family(
    "vllm:time_per_output_token_seconds", HISTOGRAM, "Time per output token (between tokens) in seconds", _TPOT_BUCKETS
)
VLLM_E2E = Family(
    "vllm:e2e_request_latency_seconds", HISTOGRAM, "End to end request latency in seconds", _REQUEST_BUCKETS
)
VLLM_RUNNING = Family("vllm:num_requests_running", GAUGE, "Number of requests in the running batch")
VLLM_WAITING = Family("vllm:num_requests_waiting", GAUGE, "Number of requests waiting to be processed")
VLLM_GPU_CACHE_USAGE = Family("vllm:gpu_cache_usage_perc", GAUGE, "KV-cache usage. 1 means 100 percent usage")
VLLM_KV_CACHE_USAGE = Family("vllm:kv_cache_usage_perc", GAUGE, "KV-cache usage. 1 means 100 percent usage")
VLLM_PROMPT_TOKENS = Family("vllm:prompt_tokens_total", COUNTER, "Number of prefill tokens processed")
VLLM_GENERATION_TOKENS = Family("vllm:generation_tokens_total", COUNTER, "Number of generation tokens processed")
VLLM_PREEMPTIONS = Family("vllm:num_preemptions_total", COUNTER, "Cumulative number of preemptions")
VLLM_ITERATION_TOKENS = Family(
    "vllm:iteration_tokens_total", HISTOGRAM, "Number of tokens per engine step", _STEP_BUCKETS
)
VLLM_REQUEST_PROMPT_TOKENS = Family(
    "vllm:request_prompt_tokens", HISTOGRAM, "Number of prefill tokens per finished request", _TOKEN_BUCKETS
)
VLLM_REQUEST_GENERATION_TOKENS = Family(
    "vllm:request_generation_tokens", HISTOGRAM, "Number of generation tokens per finished request", _TOKEN_BUCKETS
)
VLLM_REQUEST_SUCCESS = Family("vllm:request_success_total", COUNTER, "Finished requests by finished_reason")

VLLM_FAMILIES = (
    VLLM_TTFT,
    VLLM_TPOT,
    VLLM_E2E,
    VLLM_RUNNING,
    VLLM_WAITING,
    VLLM_GPU_CACHE_USAGE,
    VLLM_KV_CACHE_USAGE,
    VLLM_PROMPT_TOKENS,
    VLLM_GENERATION_TOKENS,
    VLLM_PREEMPTIONS,
    VLLM_ITERATION_TOKENS,
    VLLM_REQUEST_PROMPT_TOKENS,
    VLLM_REQUEST_GENERATION_TOKENS,
    VLLM_REQUEST_SUCCESS,
)

# Router (model_repository/llm, the public LLM), labelled by model, version and mode or role.
ROUTER_REQUESTS = Family(
    "tritonrag_router_requests_total", COUNTER, "Requests routed, by version and mode (pinned, sticky, random, shadow)"
)
ROUTER_FAILURES = Family("tritonrag_router_failures_total", COUNTER, "Routed streams that ended in an error")
ROUTER_SHADOW_SKIPPED = Family(
    "tritonrag_router_shadow_skipped_total", COUNTER, "Mirrors not sent: every shadow slot busy"
)
ROUTER_ABORTED = Family(
    "tritonrag_router_aborted_total", COUNTER, "Generator requests aborted because their caller cancelled"
)
ROUTER_REJECTED = Family(
    "tritonrag_router_rejected_total", COUNTER, "Requests refused before routing (bad or unavailable pin)"
)
ROUTER_WEIGHT = Family(
    "tritonrag_router_weight", GAUGE, "Share of routed traffic by version and role (stable, canary, shadow)"
)
ROUTING_MODES = ("pinned", "sticky", "random", "shadow")
# A decoupled model's dead Python stub is not restarted by Triton 2.51 (tritonrag.triton.stubs): the router routes around it.
ROUTER_VERSION_UP = Family(
    "tritonrag_router_version_up",
    GAUGE,
    "1 while a routed version's Python stub runs under this server, 0 once it exited (Triton 2.51 does not restart it)",
)
ROUTER_REROUTED = Family(
    "tritonrag_router_rerouted_total",
    COUNTER,
    "Requests that drew a version whose stub had exited and went to another routed version, by the dead version",
)
# Shadow agreement: the router compares each greedy mirror's output with its primary's (tritonrag.triton.shadow).
ROUTER_SHADOW_COMPARED = Family(
    "tritonrag_router_shadow_compared_total", COUNTER, "Greedy mirrored requests compared with their primary's output"
)
ROUTER_SHADOW_EXACT = Family(
    "tritonrag_router_shadow_exact_total", COUNTER, "Compared mirrors whose output text equals the primary's"
)
ROUTER_SHADOW_CHARS = Family(
    "tritonrag_router_shadow_output_chars_total", COUNTER, "Output characters of compared pairs, by side"
)

# Guarded rollout (tritonrag.triton.rollout), shown by every router from the weights file all replicas read.
ROLLOUT_STEP = Family("tritonrag_rollout_step", GAUGE, "Rollout step in force (0 = the first); -1 when none is running")
ROLLOUT_GUARD_VALUE = Family(
    "tritonrag_rollout_guard_value", GAUGE, "A rollout guard's value on the canary in the last evaluated window"
)
ROLLOUT_GUARD_THRESHOLD = Family(
    "tritonrag_rollout_guard_threshold", GAUGE, "The limit a rollout guard holds its value to in that window"
)
ROLLOUT_GUARD_OK = Family("tritonrag_rollout_guard_ok", GAUGE, "A rollout guard's state: 1 pass, 0 trip, -1 wait")
ROLLOUT_DECISION = Family(
    "tritonrag_rollout_decision_timestamp_seconds",
    GAUGE,
    "When a rollout decision was taken, by action (advance, promote, rollback), step and guard (what tripped)",
)

# Triton's own per-model families, read by the canary CLI.
TRITON_SUCCESS = "nv_inference_request_success"
TRITON_FAILURE = "nv_inference_request_failure"
# Triton's own latency quantiles, on with `--metrics-config summary_latencies=true` (triton/server.py).
# Triton 2.51 has no `histogram_latencies` setting (later releases add nv_inference_first_response_histogram_ms).
TRITON_REQUEST_SUMMARY = "nv_inference_request_summary_us"
