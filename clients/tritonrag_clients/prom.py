"""Prometheus /metrics parsing for the clients: the helpers live in tritonrag.triton.prom (the router's rollout
driver reads /metrics too, and the library may not import the clients)."""

from tritonrag.triton.prom import Samples, grown, parse_metrics, quantile, scrape, total, was_reset

__all__ = ["Samples", "grown", "parse_metrics", "quantile", "scrape", "total", "was_reset"]
