"""vLLM's offline API on the benchmark's workload, run by the vLLM virtualenv's interpreter (not ours).

    .venv-vllm/bin/python vllm_offline.py SPEC.json RESULT.json

SPEC.json: {"model_dir", "dtype", "max_model_len", "levels": [{"concurrency", "requests":
[{"prompt_ids", "max_tokens"}]}]}, written by tritonrag_bench.vllm. RESULT.json: {"results":
{concurrency: throughput numbers}, "vllm_version"}. This file imports nothing of ours: that
interpreter has vLLM and its torch, not tritonrag.
"""

import json
import sys
import time


def main():  # under a __main__ guard: vLLM's engine core starts by spawning a process
    from vllm import LLM, SamplingParams

    spec = json.load(open(sys.argv[1]))
    results = {}
    for level in spec["levels"]:
        c = level["concurrency"]
        llm = LLM(
            model=spec["model_dir"],
            dtype=spec["dtype"],
            max_num_seqs=c,
            max_model_len=spec["max_model_len"],
            enable_prefix_caching=False,
            seed=0,
        )
        prompts = [{"prompt_token_ids": r["prompt_ids"]} for r in level["requests"]]
        params = [
            SamplingParams(max_tokens=r["max_tokens"], temperature=0.0, ignore_eos=True) for r in level["requests"]
        ]
        llm.generate(prompts[:1], params[:1], use_tqdm=False)
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        duration = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        results[str(c)] = {
            "num_requests": len(outs),
            "duration_s": duration,
            "output_tokens": tokens,
            "prompt_tokens": sum(len(p["prompt_token_ids"]) for p in prompts),
            "output_tok_s": tokens / duration,
            "req_s": len(outs) / duration,
        }
        del llm
    json.dump({"results": results, "vllm_version": __import__("vllm").__version__}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
