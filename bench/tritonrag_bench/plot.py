"""The plot: throughput against concurrency with the ceiling, and TTFT / ITL percentiles, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tritonrag_bench.records import PERCENTILES


def write_plot(result: dict, path: Path) -> None:
    """Throughput vs concurrency per target with the ceiling; TTFT and ITL percentiles per target and level."""
    # matplotlib only here: it is slow to import and nothing else needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    series = {t: lv for t, lv in result["results"].items() if not t.startswith("vllm")}
    for peer in ("vllm", "vllm-allcores"):
        if result["results"].get(peer, {}).get("status") == "ok":
            series[peer] = result["results"][peer]["results"]
    for target, levels in series.items():
        cs = sorted(int(c) for c in levels)
        axes[0].plot(cs, [levels[str(c)]["output_tok_s"] for c in cs], marker="o", label=target)
    any_levels = next(iter(series.values()), {})
    if any_levels:
        cs = sorted(int(c) for c in any_levels)
        axes[0].plot(cs, [any_levels[str(c)]["ceiling_tok_s"] for c in cs], "k--", label="ceiling")
    axes[0].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="output tokens/s", title="throughput")
    if any_levels:
        axes[0].set_xticks(cs, [str(c) for c in cs])
        axes[0].minorticks_off()
        axes[0].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        top = max(any_levels[str(c)]["ceiling_tok_s"] for c in cs)
        axes[0].set_yticks([t for t in (1, 2, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000) if t <= 1.2 * top])
    axes[0].legend()
    for ax, key, title in ((axes[1], "ttft_s", "TTFT"), (axes[2], "itl_s", "inter-token latency")):
        labels, width = [], 0.8 / 3
        rows = [(t, c, lv[c]) for t, lv in series.items() for c in sorted(lv, key=int) if lv[c].get(key)]
        for i, p in enumerate(PERCENTILES):
            ax.bar(
                np.arange(len(rows)) + i * width,
                [(r[key][f"p{p}"] or 0) * 1e3 for _, _, r in rows],
                width,
                label=f"p{p}",
            )
        labels = [f"{t}\nc={c}" for t, c, _ in rows]
        ax.set_xticks(np.arange(len(rows)) + width, labels, fontsize=7)
        ax.set(ylabel="ms", title=title, yscale="log")
        ax.legend()
    fig.suptitle(f"{result['machine']['cpu']} x{result['machine']['usable_cores']}, {result['machine']['dtype']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
