"""The terminal report: the results table, the runtimes table, CPU contention, KV cache, prefix cache, targets."""

from __future__ import annotations

from rich.table import Table

from tritonrag_bench.records import PERCENTILES
from tritonrag_bench.terminal import console, ms


def print_report(result: dict) -> None:
    m, ceil = result["machine"], result["ceiling"]
    console.rule("tritonrag generator benchmark")
    console.print(
        f"machine: {m['cpu']}, {m['usable_cores']} usable cores, torch {m['torch']} with {m['torch_threads']} "
        f"threads, dtype {m['dtype']}, load average at start {m['loadavg_at_start'][0]:.2f}"
    )
    console.print(
        f"ceiling: read bandwidth {ceil['read_bandwidth_gb_s']:.1f} GB/s, matmul {ceil['matmul_gflop_s']:.0f} "
        f"GFLOP/s; model {ceil['num_params'] / 1e6:.1f} M params = {ceil['weight_bytes'] / 2**20:.0f} MiB read per "
        f"decode step -> batch-1 decode bound {ceil['read_bandwidth_gb_s'] * 1e9 / ceil['weight_bytes']:.1f} tok/s"
    )
    table = Table(title="output tok/s against the ceiling (2P(I+O)/F vs (O/C)W/BW, see docstring); latencies in ms")
    for name in (
        "target",
        "conc",
        "reqs",
        "out tok/s",
        "ceiling",
        "% ceil",
        "req/s",
        "x HF",
        "TTFT p50",
        "p95",
        "p99",
        "ITL p50",
        "p95",
        "p99",
    ):
        table.add_column(name, justify="right")
    for target, levels in result["results"].items():
        if target.startswith("vllm"):
            if levels.get("status") != "ok":
                table.add_row(target, "-", "-", levels.get("status", "not run"), *["-"] * 10)
                continue
            levels = levels["results"]
        for c, r in levels.items():
            ttft, itl = r.get("ttft_s") or {}, r.get("itl_s") or {}
            table.add_row(
                target,
                c,
                str(r["num_requests"]),
                f"{r['output_tok_s']:.1f}",
                f"{r['ceiling_tok_s']:.0f}",
                f"{100 * r['fraction_of_ceiling']:.0f}%",
                f"{r['req_s']:.3f}",
                f"{r['ratio_vs_hf']:.2f}" if "ratio_vs_hf" in r else "-",
                *(ms(ttft.get(f"p{p}")) for p in PERCENTILES),
                *(ms(itl.get(f"p{p}")) for p in PERCENTILES),
            )
    console.print(table)
    if result.get("runtimes"):
        print_runtimes(result["runtimes"])
    busy = {t: c["foreign_cpu_fraction"] for t, c in result.get("cpu_contention", {}).items()}
    console.print(
        "CPU taken by other processes while each part ran: "
        + ", ".join(f"{t} {100 * f:.0f}%" for t, f in busy.items())
        + (
            "  [red](the machine was shared: numbers are pessimistic)[/red]"
            if any(f > 0.05 for f in busy.values())
            else ""
        )
    )
    for target, why in result.get("failures", {}).items():
        console.print(f"[red]{target}: failed[/red] {why.splitlines()[0][:300]}")
    for c, kv in result.get("kv_cache", {}).items():
        peak = kv.get("peak")
        if peak:
            console.print(
                f"KV c={c}: peak {peak['blocks_in_use']} blocks ({peak['allocated_slots']} slots) for {peak['running']} "
                f"running, {peak['held_tokens']} tokens held -> paged waste {100 * peak['waste']:.1f}%; contiguous "
                f"@max_model_len waste {100 * peak['contiguous_max_len_waste']:.1f}% "
                f"({peak['contiguous_max_len_slots']} slots), @prompt+max_tokens "
                f"{100 * peak['contiguous_request_len_waste']:.1f}% ({peak['contiguous_request_len_slots']} slots)"
            )
    prefix = result.get("prefix_cache")
    if prefix:
        console.print(
            f"prefix cache: {prefix['num_requests']} requests sharing a {prefix['prefix_tokens']}-token prefix: TTFT p50 "
            f"{ms(prefix['on']['ttft_s']['p50'])} ms with caching ({prefix['on']['cached_tokens_mean']:.0f} tokens cached) "
            f"vs {ms(prefix['off']['ttft_s']['p50'])} ms without -> saving {100 * prefix['ttft_saving_p50']:.0f}%"
        )
    for name, ok in result["targets"].items():
        console.print(f"target {name}: {'-' if ok is None else ('[green]met[/green]' if ok else '[red]missed[/red]')}")


def print_runtimes(section: dict) -> None:
    ok = {name: r for name, r in section["runtimes"].items() if r.get("status") == "ok"}
    table = Table(
        title=f"runtimes side by side ({section['threads']} threads; decode steps at "
        f"{section['context_tokens']}-token contexts, p50; e2e at concurrency {section['concurrency']})"
    )
    table.add_column("measure")
    for name in ok:
        table.add_column(name, justify="right")
    for name in section["ratios_vs_torch"]:
        table.add_column(f"{name} vs torch (>1: better)", justify="right")
    batches = next(iter(ok.values()))["decode_step_s"] if ok else {}
    for b in batches:
        table.add_row(
            f"decode step B={b} (ms)",
            *(ms(r["decode_step_s"][b]["p50"]) for r in ok.values()),
            *(f"{x['decode_step_speedup'][b]:.2f}x" for x in section["ratios_vs_torch"].values()),
        )
    if ok:
        table.add_row(
            f"prefill {section['context_tokens']} tokens (ms)",
            *(ms(r["prefill_s"]["p50"]) for r in ok.values()),
            *(f"{x['prefill_speedup']:.2f}x" for x in section["ratios_vs_torch"].values()),
        )
        table.add_row(
            "e2e output tok/s",
            *(f"{r['e2e']['output_tok_s']:.1f}" for r in ok.values()),
            *(f"{x['e2e_tok_s_ratio']:.2f}x" for x in section["ratios_vs_torch"].values()),
        )
    console.print(table)
    for name, r in section["runtimes"].items():
        if r.get("status") != "ok":
            console.print(f"[red]runtime {name} not run[/red]: {r.get('reason')}")
