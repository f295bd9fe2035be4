"""Export the generator step (step_graph.GeneratorStep) to ONNX, check its parity with torch, and tell when
a graph on disk is stale.

Exported with torch.onnx.export(dynamo=True, opset 18), through tritonrag.compile.onnx_export's
helpers (staging, check, meta.json): the legacy TorchScript exporter is deprecated, and
PLATFORM.md found the dynamo one's graphs build into TensorRT for RTX. The export takes
about 1.5 minutes on the 2-core CPU (`python -m tritonrag.engine.runners.step_export`).
"""

import argparse
import hashlib
import inspect
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tritonrag.compile.onnx_export import (
    GRAPH_FILE,
    OnnxRuntime,
    check,
    export_module,
    max_abs_diff,
    read_meta,
    source_fingerprint,
    staging,
    stale_reason,
    write_meta,
)
from tritonrag.engine.runners import llama
from tritonrag.engine.runners.base import DTYPES, order_chunks
from tritonrag.engine.runners.llama import load_llama
from tritonrag.engine.runners.step_graph import (
    EXPORT_DTYPES,
    FORMAT_VERSION,
    OUTPUT_NAMES,
    GeneratorStep,
    _group_tensors,
    _GroupTensors,
    _rows,
    build_step_inputs,
    dynamic_axes,
    example_inputs,
)
from tritonrag.engine.sequence import ScheduledChunk, SchedulerOutput, Sequence
from tritonrag.paths import generator_weights_dir, onnx_dir
from tritonrag.sampling import SamplingParams

log = logging.getLogger(__name__)

# ---- export ------------------------------------------------------------------------------------------
# Parity at export: ONNX Runtime against this module run eagerly by torch, on two steps of
# random tokens. Measured max |diff| in float32: logits 4.3e-4 (magnitude 27: 2e-5 relative),
# K/V 5e-5; ~1e-4 on logits of real text (tests/engine_model/test_onnx_step.py). float16:
# logits 0.17, K/V 0.084 at magnitude ~20 (5 ulps: the two round differently over 30 layers).
PARITY_ATOL = {"float32": {"logits": 1e-3, "new_kv": 5e-4}, "float16": {"logits": 0.5, "new_kv": 0.25}}


def export_generator_step(
    model_dir: str | Path, out_dir: str | Path, dtype: str = "float32", max_positions: int | None = None
) -> Path:
    """Export the step graph to out_dir/model.onnx (weights inside), check it with onnx.checker,
    measure its parity with torch (raises past tolerance: nothing is written), write meta.json.

    About 1.5 minutes on the 2-core CPU, most of it in torch.export's decompositions.
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"the step graph exports as {' or '.join(EXPORT_DTYPES)}, not {dtype!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    started, code, source = time.perf_counter(), code_fingerprint(), source_fingerprint(model_dir)
    model = load_llama(model_dir, DTYPES[dtype], "cpu", max_positions)
    assert model.rope_cos is not None  # load_llama sets the RoPE table
    step = GeneratorStep(model).eval()
    with staging(out_dir) as folder, torch.no_grad():
        with _without_quadratic_rewrite():
            path = export_module(
                step, example_inputs(model.config, DTYPES[dtype]), folder / GRAPH_FILE, OUTPUT_NAMES, dynamic_axes()
            )
        check(path)
        extra = {
            "dtype": dtype,
            "interface_version": FORMAT_VERSION,
            "code_sha256": code,
            "max_positions": int(model.rope_cos.shape[0]),
            "dynamic_axes": dynamic_axes(),
        }
        meta = write_meta(
            path,
            "generator",
            source=source,
            parity=step_parity(step, path, dtype),
            extra=extra,
            export_seconds=time.perf_counter() - started,
        )
    log.info(
        "exported the generator step to %s (%.0f MB) in %.0f s",
        out_dir / GRAPH_FILE,
        meta["bytes"] / 1e6,
        meta["export_seconds"],
    )
    return out_dir / GRAPH_FILE


def step_parity(step: GeneratorStep, path: Path, dtype: str) -> dict[str, Any]:
    """Two steps through ONNX Runtime and through `step` eagerly, from the same pool, block size 4:
    (1) a 20-token prompt and the first 9 tokens of another; (2) the first one's decode, the
    other's next 12 tokens after its 9 cached ones, and a fresh 7-token prompt."""
    cfg, bs = step.model.config, 4
    runtime = OnnxRuntime(path)
    pool = torch.zeros(cfg.num_layers, 2, 16, bs, cfg.num_kv_heads, cfg.head_dim, dtype=DTYPES[dtype])
    gen = torch.Generator().manual_seed(0)
    a, b, c = (
        Sequence(name, torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist(), SamplingParams())
        for name, n in (("a", 20), ("b", 21), ("c", 7))
    )
    a.block_table, b.block_table, c.block_table = [5, 0, 9, 2, 7, 11], [1, 8, 3, 12, 14, 6], [4, 10]
    worst = {"logits": 0.0, "new_kv": 0.0}
    for plan in ([(a, 20), (b, 9)], [(a, 1), (b, 12), (c, 7)]):
        chunks = [ScheduledChunk(seq, n) for seq, n in plan]
        inputs = build_step_inputs(*order_chunks(SchedulerOutput(chunks)), bs)
        feeds = inputs.feeds() | {"kv_cache": pool}
        want = dict(zip(OUTPUT_NAMES, step(**feeds)))
        got = runtime.run({name: t.numpy() for name, t in feeds.items()}, OUTPUT_NAMES)
        for name in worst:
            worst[name] = max(worst[name], max_abs_diff(got[name], want[name].float().numpy()))
        pool.view(cfg.num_layers, 2, -1, cfg.num_kv_heads, cfg.head_dim).index_copy_(
            2, inputs.slot_mapping, want["new_kv"]
        )
        tokens = iter(want["logits"].argmax(-1).tolist())
        for chunk in chunks:
            sampled = chunk.samples
            chunk.seq.num_computed_tokens = chunk.end
            if sampled:
                chunk.seq.output_token_ids.append(next(tokens))
    tolerance = PARITY_ATOL[dtype]
    over = {name: d for name, d in worst.items() if not d <= tolerance[name]}
    if over:
        raise RuntimeError(f"ONNX Runtime differs from torch beyond tolerance {tolerance}: {over}; no graph written")
    assert step_parity.__doc__ is not None  # its text describes the batch in meta.json
    return {
        "reference": f"torch, this module eagerly ({dtype}, cpu)",
        "batch": " ".join(step_parity.__doc__.split(":", 1)[1].split()),
        "max_abs_diff": worst,
        "tolerance": tolerance,
    }


@contextmanager
def _without_quadratic_rewrite() -> Iterator[None]:
    """Leave onnxscript's SlicesSplit rewrite out of the exporter's optimizer while exporting.

    The rule (two Slices -> one Split) has two output nodes, and onnxscript 0.7 matches such
    patterns by walking the whole graph for every node: quadratic, about 3 of the 4.5 minutes
    this 30-layer export took on 2 cores. Our graph has no Slice nodes (`_qkv` splits), so the
    rule cannot fire here and leaving it out changes nothing in the result.
    """
    try:
        from onnxscript import rewriter
        from onnxscript.rewriter.rules.common import slice_split_rule

        rules = rewriter._DEFAULT_REWRITE_RULES
    except (ImportError, AttributeError):  # another onnxscript: export the slow way
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(rule for rule in rules if rule is not slice_split_rule)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def code_fingerprint() -> str:
    """Hash of what shapes the graph: the tracing code here, the model module and the exporter's
    versions. The runner's code is left out: editing it needs no new export."""
    import onnxscript

    digest = hashlib.sha256(f"torch {torch.__version__} onnxscript {onnxscript.__version__}".encode())
    for obj in (
        GeneratorStep,
        _GroupTensors,
        _group_tensors,
        _rows,
        example_inputs,
        dynamic_axes,
        export_generator_step,
        _without_quadratic_rewrite,
    ):
        digest.update(inspect.getsource(obj).encode())
    digest.update(Path(llama.__file__).read_bytes())
    return digest.hexdigest()


def stale_graph_reason(out_dir: str | Path, model_dir: str | Path, dtype: str = "float32") -> str | None:
    """Why out_dir holds no graph of this dtype traced by this code from these weights (None: it does).

    tritonrag.compile.onnx_export.stale_reason checks the graph file and the weights; this adds the
    dtype and the code (an edit of the graph's code must re-export).
    """
    out_dir = Path(out_dir)
    reason = stale_reason(out_dir, Path(model_dir))
    if reason:
        return reason
    meta = read_meta(Path(out_dir)) or {}
    if meta.get("dtype") != dtype:
        return f"{out_dir} holds a {meta.get('dtype')} graph, not {dtype}"
    if meta.get("interface_version") != FORMAT_VERSION or meta.get("code_sha256") != code_fingerprint():
        return f"the generator step's code changed since {out_dir / GRAPH_FILE} was exported (re-export)"
    return None


# ---- command line: make onnx -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the generator's forward step over the paged KV cache to ONNX.")
    parser.add_argument("--model-dir", default=str(generator_weights_dir()))
    parser.add_argument("--out-dir", default=str(onnx_dir() / "generator"))
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="float32")
    parser.add_argument("--max-positions", type=int, default=None, help="RoPE table length (default: the model's)")
    parser.add_argument("--force", action="store_true", help="export even if meta.json says the graph is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stale = None if args.force else stale_graph_reason(args.out_dir, args.model_dir, args.dtype)
    if not args.force and stale is None:
        print(f"{args.out_dir}/{GRAPH_FILE} is up to date")
        return 0
    print(
        f"exporting the generator step from {args.model_dir} ({args.dtype}; {stale or 'forced'}); "
        "about 1.5 to 2 minutes on 2 CPU cores"
    )
    path = export_generator_step(args.model_dir, args.out_dir, args.dtype, args.max_positions)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) and meta.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
