"""Numbers derived from a run's results: ratio to HF, fraction of the ceiling, and the issue's three targets."""

from __future__ import annotations

from tritonrag_bench.machine import ceiling_tok_s


def add_ratios_and_ceilings(result: dict) -> None:
    """Ratio to HF at the same concurrency and fraction of the ceiling, in place."""
    hf = result["results"].get("hf", {})
    for target, levels in result["results"].items():
        if target.startswith("vllm"):  # vllm, vllm-allcores: a status and its results
            levels = levels.get("results", {}) if levels.get("status") == "ok" else {}
        for c, m in levels.items():
            if "hf" in result["results"] and c in hf:
                m["ratio_vs_hf"] = m["output_tok_s"] / hf[c]["output_tok_s"]
            bound = ceiling_tok_s(result["ceiling"], m["prompt_tokens"], m["output_tokens"], int(c))
            m["ceiling_tok_s"] = bound
            m["fraction_of_ceiling"] = m["output_tok_s"] / bound


def check_targets(result: dict, top: int) -> dict:
    """The issue's three targets, evaluated on this run (None where not measured)."""
    engine = result["results"].get("engine", {}).get(str(top), {})
    peak = (result.get("kv_cache", {}).get(str(top)) or {}).get("peak")
    prefix = result.get("prefix_cache") or {}
    return {
        f"engine_throughput_ge_2.5x_hf_at_c{top}": None
        if "ratio_vs_hf" not in engine
        else engine["ratio_vs_hf"] >= 2.5,
        "kv_waste_at_peak_lt_10pct": None if not peak else peak["waste"] < 0.10,
        "prefix_ttft_saving_ge_50pct": None if "ttft_saving_p50" not in prefix else prefix["ttft_saving_p50"] >= 0.5,
    }
