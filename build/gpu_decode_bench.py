"""Engine decode throughput on one device: tokens per second at a few batch sizes, per dtype (gpu_check's line).

Why: `make gpu-check` should say how fast the engine decodes on the GPU it checked, not only that it is
right. This is the whole engine (scheduler, paged KV cache, torch runner, sampler) stepping greedily over
B requests at once: every request gets a random prompt of --prompt-len tokens, all prefill in the first step,
then each step decodes one token for every request. Decode tok/s counts the tokens produced after every
request had its first token, over the wall time of those steps (each step ends with the sampled ids on the
host, so no extra synchronisation is needed). One untimed warm-up run per dtype comes first.

    python build/gpu_decode_bench.py [--model-dir DIR] [--device cuda] [--dtypes float32,bfloat16]
        [--batches 1,8,32,128] [--prompt-len 128] [--new-tokens 64] [--budget 120] [--json out.json]

With random weights (build/random_weights.py) the numbers are the real architecture's cost, not a model's:
the work per token does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from tritonrag.engine.config import EngineConfig  # noqa: E402
from tritonrag.engine.llm_engine import LLMEngine  # noqa: E402
from tritonrag.engine.runners.torch_runner import ModelRunner  # noqa: E402
from tritonrag.engine.sampler import Sampler  # noqa: E402
from tritonrag.paths import generator_weights_dir  # noqa: E402
from tritonrag.sampling import SamplingParams  # noqa: E402


def runner_for(model_dir: str, device: str, dtype: str, batch: int, tokens_per_seq: int) -> ModelRunner:
    """One runner (weights and a KV pool that fits `batch` whole sequences) for every batch size of a dtype."""
    block_size = 16
    blocks = batch * -(-tokens_per_seq // block_size) + 8
    config = EngineConfig(
        model_dir=model_dir,
        dtype=dtype,
        device=device,
        block_size=block_size,
        num_kv_blocks=blocks,
        max_num_seqs=batch,
        max_num_batched_tokens=max(512, batch * tokens_per_seq),
        max_model_len=tokens_per_seq + block_size,
        enable_prefix_caching=False,
    )
    return ModelRunner(config)


def decode_run(runner: ModelRunner, batch: int, prompt_len: int, new_tokens: int, seed: int = 0) -> dict:
    """Serve `batch` random prompts greedily; decode tok/s after every request has its first token."""
    engine = LLMEngine(runner.config, runner, Sampler(), runner.eos_token_ids)
    rng = random.Random(seed)
    vocab = runner.model_config.vocab_size
    for i in range(batch):
        prompt = [rng.randrange(100, vocab) for _ in range(prompt_len)]
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=new_tokens, ignore_eos=True))
    produced = dict.fromkeys(map(str, range(batch)), 0)
    decode_start, decode_tokens, steps, decode_steps = None, 0, 0, 0
    while engine.has_unfinished():
        outputs = engine.step()
        steps += 1
        for out in outputs:
            produced[out.request_id] += len(out.new_token_ids)
            if decode_start is not None:
                decode_tokens += len(out.new_token_ids)
        if decode_start is None and all(produced.values()):
            decode_start, decode_steps = time.perf_counter(), steps
    seconds = time.perf_counter() - decode_start if decode_start is not None else 0.0
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks, "a finished request kept KV blocks"
    decode_step_count = steps - decode_steps
    return {
        "batch": batch,
        "decode_tokens": decode_tokens,
        "decode_seconds": round(seconds, 4),
        "decode_tok_s": round(decode_tokens / seconds, 1) if seconds > 0 else None,
        "ms_per_step": round(1000 * seconds / decode_step_count, 2) if decode_step_count else None,
    }


def bench(args: argparse.Namespace) -> dict:
    deadline = time.monotonic() + args.budget
    batches = sorted(int(b) for b in args.batches.split(","))
    results: dict = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "model_dir": args.model_dir,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "runs": [],
        "not_run": [],
    }
    if args.device.startswith("cuda"):
        results["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    for dtype in args.dtypes.split(","):
        if time.monotonic() > deadline:
            results["not_run"] += [f"{dtype} batch {b}: out of budget" for b in batches]
            continue
        runner = runner_for(args.model_dir, args.device, dtype, batches[-1], args.prompt_len + args.new_tokens)
        decode_run(runner, batches[-1], args.prompt_len, min(4, args.new_tokens))  # warm-up, untimed
        for batch in batches:
            if time.monotonic() > deadline:
                results["not_run"].append(f"{dtype} batch {batch}: out of budget")
                continue
            run = decode_run(runner, batch, args.prompt_len, args.new_tokens)
            results["runs"].append({"dtype": dtype, **run})
            print(f"{dtype} batch {batch}: {run['decode_tok_s']} tok/s ({run['ms_per_step']} ms/step)", flush=True)
        del runner
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(generator_weights_dir()))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds; runs past it are listed as not run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing measured", file=sys.stderr)
        return 1
    results = bench(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
