"""The hf target: transformers `model.generate()` with static batching, the peer our engine is measured against."""

from __future__ import annotations

import gc
import time

import torch
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer

from tritonrag_bench.records import RequestRecord, level_metrics
from tritonrag_bench.terminal import progress_bar, say_level
from tritonrag_bench.workload import BenchRequest, BenchSettings


class StepClock(BaseStreamer):
    """A generate() streamer that timestamps every decoded step (the first put, the prompt, is not one)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first put is the prompt
            self.prompt_seen = True
            return
        self.times.append(time.monotonic())

    def end(self) -> None:
        pass


def bench_hf(settings: BenchSettings, workloads: dict[int, list[BenchRequest]], tokenizer) -> dict:
    """Every level's requests, in order, in batches of `concurrency` (closed loop: a batch starts when the last ends)."""
    model = AutoModelForCausalLM.from_pretrained(settings.model_dir, dtype=getattr(torch, settings.dtype)).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    _hf_batch(model, [workloads[min(workloads)][0]], pad_id, settings.hf_cache)  # warm-up, untimed
    results = {}
    for c, requests in workloads.items():
        done: list[RequestRecord] = []
        with progress_bar() as bar:
            task = bar.add_task(f"hf      c={c}", total=len(requests))
            start = time.monotonic()
            for i in range(0, len(requests), c):
                done += _hf_batch(model, requests[i : i + c], pad_id, settings.hf_cache)
                bar.advance(task, len(requests[i : i + c]))
            end = time.monotonic()
        results[str(c)] = level_metrics(done, start, end)
        results[str(c)]["padded_output_tokens"] = sum(
            _batch_steps(requests[i : i + c]) * len(requests[i : i + c]) for i in range(0, len(requests), c)
        )
        say_level("hf", c, results[str(c)])
    del model
    gc.collect()
    return results


def _batch_steps(batch: list[BenchRequest]) -> int:
    return max(r.max_tokens for r in batch)


def _hf_batch(model, batch: list[BenchRequest], pad_id: int, cache: str) -> list[RequestRecord]:
    """One static batch: left-padded prompts, greedy, every row decodes the batch's longest output."""
    width = max(len(r.prompt_ids) for r in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, r in enumerate(batch):
        input_ids[row, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[row, width - len(r.prompt_ids) :] = 1
    steps = _batch_steps(batch)
    clock = StepClock()
    arrival = time.monotonic()
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=pad_id,
            streamer=clock,
            cache_implementation=cache,
        )
    end = time.monotonic()
    records = []
    for r in batch:
        record = RequestRecord(r.request_id, len(r.prompt_ids), r.max_tokens, arrival)
        record.token_times = clock.times[: r.max_tokens]
        record.num_output_tokens = len(record.token_times)
        record.finish = end
        records.append(record)
    return records
