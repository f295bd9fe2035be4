"""Build TensorRT engines from the exported ONNX graphs (`make engines`).

Profiles come from the serving settings (the embedder's config.pbtxt and defaults, the
generator's engine settings over every served version); engines land in the engine cache
(artifacts/engines/<model>/<key>/), so an unchanged model is a cache hit, not a rebuild.
With full TensorRT the engine targets this machine's GPU; with TensorRT for RTX it is built
ahead of time, without a GPU, for --compute-capability (default sm89).

    python build/build_engines.py [--model embedder|generator|all] [--precision float32|float16|bfloat16]
                                  [--compute-capability sm89] [--backend auto|tensorrt|tensorrt_rtx] [--force]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from rich.console import Console  # noqa: E402
from rich.logging import RichHandler  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from tritonrag.compile.trt_build import (
    BACKENDS,
    KEY_CHARS,
    PRECISIONS,
    BuildError,
    BuildResult,
    build_engine,
    load_backend,
)
from tritonrag.paths import engines_dir, onnx_dir  # noqa: E402
from tritonrag.triton.repository import MODEL_SETTINGS

console = Console()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODEL_SETTINGS, "all"], default="all")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="default: the ONNX graph's own (the only choice with TensorRT for RTX)",
    )
    parser.add_argument(
        "--compute-capability",
        default=None,
        help="TensorRT for RTX target, e.g. sm80, sm86, sm89, sm120 (default sm89); full TensorRT builds for this GPU",
    )
    parser.add_argument(
        "--backend", choices=["auto", *BACKENDS], default="auto", help="auto: tensorrt if it imports, else tensorrt_rtx"
    )
    parser.add_argument(
        "--onnx-dir", type=Path, default=onnx_dir(), help="graphs at <dir>/<model>/model.onnx (default: %(default)s)"
    )
    parser.add_argument("--engines-dir", type=Path, default=engines_dir(), help="engine cache (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    return parser.parse_args(argv)


def summary(results: list[BuildResult]) -> Table:
    first = results[0].meta
    table = Table(title=f"TensorRT engines ({first['backend']} {first['backend_version']})")
    for column in ("model", "target", "precision", "key", "MiB", "build s", "cache"):
        table.add_column(column, no_wrap=True)
    for r in results:
        m = r.meta
        table.add_row(
            r.name,
            m["compute_capability"],
            m["precision"],
            r.key[:KEY_CHARS],
            f"{r.size_bytes / 2**20:.1f}",
            f"{r.build_seconds:.1f}",
            "hit" if r.cache_hit else "built",
        )
    return table


def describe(result: BuildResult) -> str:
    """The engine's path and its inputs / outputs with shapes and dtypes, as engine.json records them."""
    io = [f"{t['name']} {t['dtype']}{t['shape']}" for t in result.meta["inputs"] + result.meta["outputs"]]
    return f"{result.name}: {result.engine_path}\n  " + "\n  ".join(io)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    models = list(MODEL_SETTINGS) if args.model == "all" else [args.model]
    results = []
    try:
        backend = load_backend(args.backend)
        console.print(f"backend: {backend.name} {backend.version}")
        for name in models:
            dims = MODEL_SETTINGS[name]()
            results.append(
                build_engine(
                    name,
                    args.onnx_dir / name / "model.onnx",
                    dims,
                    precision=args.precision,
                    compute_capability=args.compute_capability,
                    backend=backend,
                    root=args.engines_dir,
                    force=args.force,
                )
            )
    except BuildError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    finally:
        if results:
            console.print(summary(results))
    for r in results:
        console.print(describe(r), highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
