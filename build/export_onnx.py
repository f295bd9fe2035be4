"""Export the models' ONNX graphs (checked, with parity against torch) to artifacts/onnx/<model>/.

Each graph gets a meta.json (tritonrag.compile.onnx_export); a graph whose meta.json matches the
checkpoint and the file on disk is up to date and skipped (--force re-exports). --bench
then times the embedder under torch and ONNX Runtime on this machine.

    python build/export_onnx.py [--model embedder|reranker|all] [--checkpoint DIR] [--out DIR] [--force]
                                [--bench] [--bench-chunks N]

The reranker has no default checkpoint (no trained CrossEncoder installs offline): pass
--model reranker --checkpoint DIR; `all` exports it only when --checkpoint names it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from tritonrag.compile.onnx_export import GRAPH_FILE, read_meta, stale_reason
from tritonrag.paths import onnx_dir  # noqa: E402
from tritonrag.retrieval.export import export_cross_encoder, export_embedder


def _embedder_dir() -> Path:
    from tritonrag.retrieval.embedder import default_model_dir

    return default_model_dir()


@dataclass(frozen=True)
class Exporter:
    """How to export one model: export(checkpoint, out_dir) -> meta.json's content.

    default_checkpoint() gives the checkpoint when none is passed, or None when one must be.
    """

    export: Callable[[Path, Path], dict]
    default_checkpoint: Callable[[], Path | None]
    what: str


def _generator_dir() -> Path:
    from tritonrag.paths import generator_weights_dir

    return generator_weights_dir()


def _export_generator(checkpoint: Path, out_dir: Path) -> dict:
    from tritonrag.engine.runners.step_export import export_generator_step

    export_generator_step(checkpoint, out_dir)
    return read_meta(out_dir)


EXPORTERS: dict[str, Exporter] = {
    "embedder": Exporter(export_embedder, _embedder_dir, "all-MiniLM-L6-v2 -> embedding [B, 384], token_states"),
    "reranker": Exporter(export_cross_encoder, lambda: None, "a CrossEncoder directory -> score [B]"),
    "generator": Exporter(
        _export_generator, _generator_dir, "SmolLM2 forward step over the paged KV cache -> logits, new K/V (fp32)"
    ),
}


@dataclass
class Outcome:
    """One row of the summary table."""

    model: str
    status: str
    meta: dict | None = None
    seconds: float = 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=[*EXPORTERS, "all"],
        default="all",
        help="; ".join(f"{name}: {e.what}" for name, e in EXPORTERS.items()),
    )
    parser.add_argument("--checkpoint", type=Path, help="checkpoint directory (one model; with `all`, the reranker's)")
    parser.add_argument("--out", type=Path, default=onnx_dir(), help="graphs go to OUT/<model>/ (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="re-export even if up to date")
    parser.add_argument("--bench", action="store_true", help="then time the embedder: torch against onnxruntime")
    parser.add_argument("--bench-chunks", type=int, default=0, help="corpus chunks for the throughput run (0 = all)")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    """(model, checkpoint) pairs to export; checkpoint None means there is none to export."""
    if args.model != "all":
        return [(args.model, args.checkpoint or EXPORTERS[args.model].default_checkpoint())]
    return [
        (name, args.checkpoint if name == "reranker" else exporter.default_checkpoint())
        for name, exporter in EXPORTERS.items()
    ]


def _stale(name: str, out_dir: Path, checkpoint: Path) -> str | None:
    """Why the graph must be exported again; the generator's also goes stale when its graph code changes."""
    if name == "generator":
        from tritonrag.engine.runners.step_export import stale_graph_reason

        return stale_graph_reason(out_dir, checkpoint)
    return stale_reason(out_dir, checkpoint)


def export_one(name: str, checkpoint: Path | None, out_root: Path, force: bool) -> Outcome:
    """Export one model unless it is up to date; a missing checkpoint is an error only when it was named."""
    if checkpoint is None:
        return Outcome(name, "skipped: no checkpoint (pass --model reranker --checkpoint DIR)")
    if not Path(checkpoint).exists():
        raise SystemExit(f"{name}: checkpoint {checkpoint} does not exist")
    out_dir = out_root / name
    if not force and _stale(name, out_dir, checkpoint) is None:
        return Outcome(name, "up to date", read_meta(out_dir))
    started = time.perf_counter()
    meta = EXPORTERS[name].export(Path(checkpoint), out_dir)
    return Outcome(name, "exported", meta, time.perf_counter() - started)


def run(args: argparse.Namespace) -> list[Outcome]:
    """Export what args ask for, with a progress display; returns one Outcome per model."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    todo = plan(args)
    outcomes = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as progress:
        overall = progress.add_task("ONNX export", total=len(todo))
        for name, checkpoint in todo:
            progress.update(overall, description=f"{name}: export, onnx.checker, parity with torch")
            outcomes.append(export_one(name, checkpoint, args.out, args.force))
            progress.advance(overall)
        progress.update(overall, description="ONNX export done")
    return outcomes


def print_summary(outcomes: list[Outcome], out_root: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ONNX graphs in {out_root}")
    for column in ("model", "status", "MB", "opset", "inputs -> outputs", "max |diff| vs torch (tolerance)", "s"):
        table.add_column(column, justify="right" if column in ("MB", "opset", "s") else "left")
    for o in outcomes:
        meta = o.meta or {}
        table.add_row(
            o.model,
            o.status,
            f"{meta['bytes'] / 1e6:.1f}" if meta else "",
            str(meta.get("opset", "")),
            _signature(meta),
            _parity(meta),
            f"{o.seconds:.1f}" if o.seconds else "",
        )
    Console(width=160).print(table)


def _signature(meta: dict) -> str:
    if not meta:
        return ""
    names = lambda specs: ", ".join(s["name"] for s in specs)  # noqa: E731
    return f"{names(meta['inputs'])} -> {names(meta['outputs'])}"


def _parity(meta: dict) -> str:
    parity = meta.get("parity") or {}
    return ", ".join(f"{k} {v:.1e} ({parity['tolerance'][k]:.0e})" for k, v in parity.get("max_abs_diff", {}).items())


# ---- --bench: the measurement behind the embedder's default runtime ---------------------------


def bench_embedder(graph: Path, chunks: int = 0, repeats: int = 5) -> dict:
    """Median ms per call at batch 1 and 32 (eval questions) and corpus chunks/s, torch against onnxruntime.

    Calls alternate between the runtimes so that a busy shared CPU slows both alike.
    """
    import numpy as np
    import torch

    from tritonrag.retrieval import corpus
    from tritonrag.retrieval.embedder import Embedder
    from tritonrag.retrieval.evaluate import load_questions

    runtimes = {"torch": Embedder(runtime="torch"), "onnxruntime": Embedder(runtime="onnxruntime", onnx_path=graph)}
    if runtimes["onnxruntime"].runtime_choice.fell_back:
        raise SystemExit(f"cannot bench: {runtimes['onnxruntime'].runtime_choice.describe()}")
    questions = [q.question for q in load_questions()]
    chunked = corpus.chunk_all(corpus.default_corpus(), corpus.DEFAULT_CHUNK_WORDS, corpus.DEFAULT_OVERLAP_WORDS)
    texts = [corpus.passage_text(c.title, c.text) for c in chunked][: chunks or None]
    result = {
        "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads, "
        f"onnxruntime default threads",
        "diff": 0.0,
    }
    for batch, count, rounds in ((1, 64, 2), (32, 128, repeats)):
        print(f"timing batch {batch}: {count // batch} batches x {rounds} rounds, runtimes alternating")
        batches = [runtimes["torch"].tokenize(questions[i : i + batch]) for i in range(0, count, batch)]
        times, diff = _alternate(runtimes, batches, rounds)
        result[f"batch {batch} ms"] = {k: statistics.median(v) * 1000 for k, v in times.items()}
        result["diff"] = max(result["diff"], diff)
    seconds, vectors = _alternate_corpus(runtimes, texts)
    result["corpus chunks/s"] = {name: len(texts) / s for name, s in seconds.items()}
    result["corpus diff"] = float(np.abs(vectors["torch"] - vectors["onnxruntime"]).max())
    result["corpus chunks"] = len(texts)
    return result


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _alternate(runtimes: dict, batches: list[dict], repeats: int) -> tuple[dict[str, list[float]], float]:
    """Per-call seconds of each runtime over batches (after one warm-up call each), and their max |diff|."""
    import numpy as np

    times: dict[str, list[float]] = {name: [] for name in runtimes}
    diff = 0.0
    for embedder in runtimes.values():
        embedder.embed_tokens(batches[0]["input_ids"], batches[0]["attention_mask"])
    for _ in range(repeats):
        for tokens in batches:
            outputs = []
            for name, embedder in runtimes.items():
                started = time.perf_counter()
                outputs.append(embedder.embed_tokens(tokens["input_ids"], tokens["attention_mask"]))
                times[name].append(time.perf_counter() - started)
            diff = max(diff, float(np.abs(outputs[0] - outputs[1]).max()))
    return times, diff


def _alternate_corpus(runtimes: dict, texts: list[str], batch: int = 32) -> tuple[dict[str, float], dict]:
    """Embed texts with each runtime, alternating per batch of chunks (longest first, as Embedder.embed)."""
    import numpy as np
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    seconds = {name: 0.0 for name in runtimes}
    vectors = {name: np.zeros((len(texts), e.dim), np.float32) for name, e in runtimes.items()}
    for first in tqdm(range(0, len(order), batch), desc="corpus, both runtimes", unit="batch"):
        rows = order[first : first + batch]
        for name, embedder in runtimes.items():
            started = time.perf_counter()
            vectors[name][rows] = embedder.embed([texts[i] for i in rows], batch_size=batch)
            seconds[name] += time.perf_counter() - started
    return seconds, vectors


def print_bench(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"embedder, torch vs onnxruntime ({result['machine']})")
    for column in ("measure", "torch", "onnxruntime", "speed-up"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for key in ("batch 1 ms", "batch 32 ms"):
        t, o = result[key]["torch"], result[key]["onnxruntime"]
        table.add_row(f"{key} (median per call, eval questions)", f"{t:.1f}", f"{o:.1f}", f"{t / o:.2f}x")
    t, o = result["corpus chunks/s"]["torch"], result["corpus chunks/s"]["onnxruntime"]
    label = f"corpus chunks/s ({result['corpus chunks']} chunks, batch 32)"
    table.add_row(label, f"{t:.1f}", f"{o:.1f}", f"{o / t:.2f}x")
    Console(width=140).print(table)
    print(f"max |embedding diff|: queries {result['diff']:.1e}, corpus {result['corpus diff']:.1e}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    outcomes = run(args)
    print_summary(outcomes, args.out)
    if args.bench:
        print_bench(bench_embedder(args.out / "embedder" / GRAPH_FILE, args.bench_chunks))
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
