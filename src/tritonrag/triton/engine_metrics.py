"""The engine's metrics on Triton's /metrics endpoint: our families and vllm_backend's, fed by one observer.

The serving loop calls the observer's hooks (tritonrag.engine.serving.Observer); each hook
updates our `tritonrag_*` family and its vLLM twin (`vllm:*`, the names vllm_backend exports),
labelled by model and version. The families are made through `make_family`, which inside
Triton is `pb_utils.MetricFamily` behind one lock (tritonrag.triton.custom_metrics.triton_family);
tests pass a recorder. Updates go through a MetricOutbox (tritonrag.triton.metric_outbox), so
that the loop thread never waits on a round trip to the server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tritonrag import metrics
from tritonrag.engine.llm_engine import LLMEngine
from tritonrag.engine.serving import Completion
from tritonrag.metrics import Family
from tritonrag.triton.metric_outbox import MetricOutbox

MakeFamily = Callable[[Family], Any]  # a Family -> an object with .Metric(labels=..., buckets=...)

# Engine counters and their (ours, vLLM's) families: stats field -> families.
_COUNTERS = {
    "num_preemptions": (metrics.PREEMPTIONS, metrics.VLLM_PREEMPTIONS),
    "prompt_tokens_total": (metrics.PROMPT_TOKENS, metrics.VLLM_PROMPT_TOKENS),
    "generation_tokens_total": (metrics.GENERATION_TOKENS, metrics.VLLM_GENERATION_TOKENS),
    "num_steps": (metrics.ENGINE_STEPS,),  # ours only: vLLM exports no such counters
    "num_mixed_steps": (metrics.MIXED_STEPS,),
    "num_partial_prefill_chunks": (metrics.PARTIAL_PREFILL_CHUNKS,),
}


class EngineMetrics:
    """An Observer for the serving loop: latencies, batch state, KV usage and token counters, twice named."""

    def __init__(self, labels: dict[str, str], make_family: MakeFamily, outbox: MetricOutbox | None = None):
        self.labels = labels
        self.outbox = outbox or MetricOutbox()
        self._families = {
            family.name: make_family(family) for family in (*metrics.ENGINE_FAMILIES, *metrics.VLLM_FAMILIES)
        }
        self._metrics: dict[tuple[str, str], Any] = {}
        self._last_totals = dict.fromkeys(_COUNTERS, 0)
        for family in (*metrics.ENGINE_FAMILIES, *metrics.VLLM_FAMILIES):  # on the endpoint from the start, at 0
            if family not in (metrics.REQUEST_SUCCESS, metrics.VLLM_REQUEST_SUCCESS):  # these by finished_reason
                self._metric(family)

    def _metric(self, family: Family, **extra: str) -> Any:
        key = (family.name, repr(sorted(extra.items())))
        if key not in self._metrics:
            labels = {**self.labels, **extra}
            if family.kind == metrics.HISTOGRAM:
                buckets = list(family.buckets or metrics.LATENCY_BUCKETS)
                self._metrics[key] = self._families[family.name].Metric(labels=labels, buckets=buckets)
            else:
                self._metrics[key] = self._families[family.name].Metric(labels=labels)
        return self._metrics[key]

    def _observe(self, value: float, *families: Family) -> None:
        for family in families:
            self.outbox.observe(self._metric(family), value)

    def close(self) -> None:
        """Send what is queued and stop the outbox's thread."""
        self.outbox.close()

    def on_first_token(self, ttft: float) -> None:
        self._observe(ttft, metrics.TTFT, metrics.VLLM_TTFT)

    def on_inter_token(self, latency: float) -> None:
        self._observe(latency, metrics.ITL, metrics.VLLM_TPOT)

    def on_finish(self, e2e: float, completion: Completion) -> None:
        self._observe(e2e, metrics.E2E, metrics.VLLM_E2E)
        self._observe(completion.num_prompt_tokens, metrics.VLLM_REQUEST_PROMPT_TOKENS)
        self._observe(completion.num_output_tokens, metrics.VLLM_REQUEST_GENERATION_TOKENS)
        for family in (metrics.REQUEST_SUCCESS, metrics.VLLM_REQUEST_SUCCESS):
            self.outbox.increment(self._metric(family, finished_reason=completion.finish_reason), 1)

    def on_timeout(self) -> None:
        self.outbox.increment(self._metric(metrics.REQUEST_TIMEOUTS), 1)

    def on_stall(self, stalled: bool) -> None:
        self.outbox.set(self._metric(metrics.ENGINE_STALLED), 1.0 if stalled else 0.0)

    def on_step(self, engine: LLMEngine) -> None:
        stats = engine.stats()
        gauges = {
            metrics.RUNNING: stats.num_running,
            metrics.VLLM_RUNNING: stats.num_running,
            metrics.WAITING: stats.num_waiting,
            metrics.VLLM_WAITING: stats.num_waiting,
            metrics.KV_USAGE: stats.kv_usage,
            metrics.VLLM_GPU_CACHE_USAGE: stats.kv_usage,
            metrics.VLLM_KV_CACHE_USAGE: stats.kv_usage,
            metrics.PREFIX_HIT_RATE: stats.prefix_cache_hits / stats.prefix_cache_queries
            if stats.prefix_cache_queries
            else 0.0,
        }
        for family, value in gauges.items():
            self.outbox.set(self._metric(family), value)
        grown = {field: getattr(stats, field) - last for field, last in self._last_totals.items()}
        for field, delta in grown.items():
            if delta > 0:
                for family in _COUNTERS[field]:
                    self.outbox.increment(self._metric(family), delta)
                self._last_totals[field] += delta
        step_tokens = grown["prompt_tokens_total"] + grown["generation_tokens_total"]
        if step_tokens > 0:
            self._observe(step_tokens, metrics.VLLM_ITERATION_TOKENS)
