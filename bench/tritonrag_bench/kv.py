"""Paged-KV occupancy per engine step against contiguous allocators: the engine target's waste numbers."""

from __future__ import annotations


class KVSampler:
    """Paged-KV occupancy after each step; keeps the step with the most blocks in use."""

    def __init__(self, engine, max_model_len: int) -> None:
        self.engine = engine
        self.max_model_len = max_model_len
        self.peak: dict | None = None
        self.weighted_alloc = 0
        self.weighted_held = 0

    def sample(self) -> None:
        sched = self.engine.scheduler
        bs = sched.kv.block_size
        fill: dict[int, int] = {}
        for seq in sched.running:
            for i, block_id in enumerate(seq.block_table):
                held = min(bs, max(seq.num_computed_tokens - i * bs, 0))
                fill[block_id] = max(fill.get(block_id, 0), held)
        if not fill:
            return
        allocated, held = len(fill) * bs, sum(fill.values())
        self.weighted_alloc += allocated
        self.weighted_held += held
        if self.peak is None or allocated > self.peak["allocated_slots"]:
            running = sched.running
            self.peak = {
                "running": len(running),
                "blocks_in_use": len(fill),
                "allocated_slots": allocated,
                "held_tokens": held,
                "waste": 1 - held / allocated,
                "pool_blocks": sched.kv.num_blocks,
                "pool_usage": sched.kv.usage,
                "contiguous_max_len_slots": len(running) * self.max_model_len,
                "contiguous_max_len_waste": 1 - held / (len(running) * self.max_model_len),
                "contiguous_request_len_slots": sum(s.num_prompt_tokens + s.sampling.max_tokens for s in running),
                "contiguous_request_len_waste": 1
                - held / sum(s.num_prompt_tokens + s.sampling.max_tokens for s in running),
            }

    def summary(self) -> dict:
        mean = 1 - self.weighted_held / self.weighted_alloc if self.weighted_alloc else None
        return {"peak": self.peak, "mean_waste_over_steps": mean}
