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
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Router (model_repository/generator_router), labelled by model, version and mode or role.
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

# Triton's own per-model families, read by the canary CLI.
TRITON_SUCCESS = "nv_inference_request_success"
TRITON_FAILURE = "nv_inference_request_failure"
