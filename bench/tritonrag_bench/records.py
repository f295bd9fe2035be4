"""Per-request timestamps and the metrics of one level: throughput and TTFT / ITL / end-to-end percentiles."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 95, 99)


@dataclass
class RequestRecord:
    """Timestamps (time.monotonic) of one request as its client saw them."""

    request_id: str
    num_prompt_tokens: int
    max_tokens: int
    arrival: float
    token_times: list[float] = field(default_factory=list)  # one per token (or per streamed response)
    finish: float | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None}
    array = np.asarray(values, dtype=np.float64)
    out = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(array, PERCENTILES))}
    out["mean"] = float(array.mean())
    return out


def level_metrics(records: list[RequestRecord], start: float, end: float) -> dict:
    duration = end - start
    output_tokens = sum(r.num_output_tokens for r in records)
    return {
        "num_requests": len(records),
        "duration_s": duration,
        "prompt_tokens": sum(r.num_prompt_tokens for r in records),
        "output_tokens": output_tokens,
        "output_tok_s": output_tokens / duration,
        "req_s": len(records) / duration,
        "ttft_s": percentiles([r.ttft for r in records if r.token_times]),
        "itl_s": percentiles([x for r in records for x in r.itls()]),
        "e2e_s": percentiles([r.finish - r.arrival for r in records if r.finish is not None]),
        "per_request": [
            {
                "id": r.request_id,
                "prompt_tokens": r.num_prompt_tokens,
                "output_tokens": r.num_output_tokens,
                "arrival_s": round(r.arrival - start, 4),
                "ttft_s": round(r.ttft, 4) if r.token_times else None,
                "e2e_s": round(r.finish - r.arrival, 4) if r.finish is not None else None,
            }
            for r in sorted(records, key=lambda r: r.arrival)
        ],
    }
