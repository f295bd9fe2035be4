"""`make bench-serve`'s outputs: the markdown table and the plot (throughput, TTFT, ITL, latency vs concurrency)."""

from __future__ import annotations

from pathlib import Path


def _pair(stats: dict, low: str = "p50", high: str = "p99") -> str:
    if stats.get(low) is None or stats.get(high) is None:
        return "-"
    return f"{stats[low]:.0f} / {stats[high]:.0f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def markdown_table(result: dict) -> str:
    """One row per system, dtype and concurrency; the machine and the load above it."""
    m = result["machine"]
    lines = [
        f"{result['label']}: {m['cpu']}, {m['usable_cores']} cores, torch {m['torch']}; {result['load_tool']}; "
        f"load average {m['loadavg_at_start'][0]:.1f} at start, {m['loadavg_at_end'][0]:.1f} at end.",
        "",
        "| system | dtype | concurrency | requests | output tok/s | TTFT p50 / p99 (ms) | TTFT after the burst "
        "p50 / p99 (ms) | ITL p50 / p99 (ms) | latency p50 / p99 (ms) | prompt / output tokens (asked) | preemptions "
        "| other processes' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['dtype']} | {r['concurrency']} | failed: {r['error'][:120]} |")
            continue
        tokens = f"{r['prompt_tokens']:.0f} / {r['output_tokens']:.0f} ({r['asked_output_tokens']})"
        lines.append(
            f"| {r['system']} | {r['dtype']} | {r['concurrency']} | {r['requests']} | {r['output_tok_s']:.1f} "
            f"| {_pair(r['ttft_ms'])} | {_pair(r.get('ttft_after_burst_ms', {}))} | {_pair(r['itl_ms'])} | {_pair(r['latency_ms'])} | {tokens} "
            f"| {_count(r.get('preemptions'))} | {r['foreign_cpu_fraction']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def write_plot(result: dict, path: Path) -> None:
    """Four panels against concurrency, one line per system and dtype: tok/s, and p50 (solid) / p99 (dashed) latencies."""
    # matplotlib only here: it is slow to import and nothing else needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    series: dict[tuple[str, str], list[dict]] = {}
    for r in result["rows"]:
        if "error" not in r:
            series.setdefault((r["system"], r["dtype"]), []).append(r)
    panels = (("ttft_ms", "TTFT (ms)"), ("itl_ms", "inter-token latency (ms)"), ("latency_ms", "request latency (ms)"))
    for i, ((system, dtype), rows) in enumerate(sorted(series.items())):
        rows.sort(key=lambda r: r["concurrency"])
        cs, color = [r["concurrency"] for r in rows], f"C{i}"
        label = f"{system} {dtype}"
        axes[0].plot(cs, [r["output_tok_s"] for r in rows], "o-", color=color, label=label)
        for ax, (key, _) in zip(axes[1:], panels):
            ax.plot(cs, [r[key]["p50"] for r in rows], "o-", color=color, label=f"{label} p50")
            ax.plot(cs, [r[key]["p99"] for r in rows], "x--", color=color, label=f"{label} p99")
    axes[0].set(title="output tokens/s", xlabel="concurrency", xscale="log")
    axes[0].set_ylim(bottom=0)
    for ax, (_, title) in zip(axes[1:], panels):
        ax.set(title=title, xlabel="concurrency", xscale="log", yscale="log")
    for ax in axes:
        levels = sorted({r["concurrency"] for r in result["rows"]})
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    m = result["machine"]
    fig.suptitle(f"{result['label']}: {m['cpu']} x{m['usable_cores']}, {result['load_tool']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
