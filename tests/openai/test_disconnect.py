"""A client that goes away mid-stream cancels its generation: the engine stops it and frees its KV blocks."""

from __future__ import annotations

import httpx

from tritonrag.metrics import KV_USAGE, REQUEST_SUCCESS, RUNNING


def aborted(stack) -> float:
    """Requests the engine ended with finish reason `abort` (a cancel), from its success counter."""
    text = httpx.get(stack.triton.metrics_url, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(REQUEST_SUCCESS.name) and 'finished_reason="abort"' in line
    )


def test_disconnect_mid_stream_cancels_the_generation(stack, llm_id):
    before = aborted(stack)
    body = {
        "model": llm_id,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 1000,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, headers=headers, timeout=300) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))  # generation has begun
        assert '"role": "assistant"' in first
        assert stack.wait_for(lambda: stack.metric(RUNNING.name) == 1 and stack.metric(KV_USAGE.name) > 0)
        assert sum(line.startswith("data: ") for _, line in zip(range(10), lines)) >= 4  # tokens keep coming
    # leaving the block closes the connection, about 1000 tokens from the end
    assert stack.wait_for(lambda: stack.metric(RUNNING.name) == 0, timeout=30), "the generation ran on"
    assert stack.wait_for(lambda: stack.metric(KV_USAGE.name) == 0, timeout=30), "its KV blocks were not freed"
    assert stack.wait_for(lambda: aborted(stack) == before + 1, timeout=30)
