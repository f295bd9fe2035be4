"""Every generator stub dies: the OpenAI API answers 503 in OpenAI's error shape, saying why, and never hangs.

This module runs its own tritonserver and OpenAI service (killing stubs would end the shared stack's
generator). Triton 2.51 does not restart a decoupled model's stub; the `llm` router sees the stubs gone
(tritonrag.triton.stubs) and refuses UNAVAILABLE, which the service maps to 503: retryable, unlike a 500.
"""

from __future__ import annotations

import os
import signal

import openai
import pytest
from openai_stack import running_stack

from tritonrag_bench.soak.chaos import stub_pid

pytestmark = pytest.mark.server
MESSAGES = [{"role": "user", "content": "What is a Python list?"}]


@pytest.fixture(scope="module")
def dead_stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("dead-generator"), "openai-dead-generator") as stack:
        yield stack


def test_every_request_is_a_503_once_every_generator_stub_is_dead(dead_stack):
    client = openai.OpenAI(base_url=dead_stack.base_url, api_key=dead_stack.api_key, max_retries=0, timeout=120)
    llm = next(m.id for m in client.models.list().data if m.model_extra.get("kind") == "llm")
    assert client.chat.completions.create(model=llm, messages=MESSAGES, max_tokens=2).choices, "serving before"
    for version in (1, 2):
        pid = stub_pid(dead_stack.triton.process.pid, version)
        assert pid is not None, f"no stub process for generator version {version}"
        os.kill(pid, signal.SIGKILL)
    assert dead_stack.wait_for(lambda: dead_stack.metric("tritonrag_router_version_up") == 0), "router saw no death"

    for model in (llm, "rag"):
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as caught:
                response = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, stream=stream)
                if stream:
                    list(response)  # a stream's error may come with its first event
            error = caught.value
            assert error.status_code == 503, (model, stream, error.status_code, error.message)
            body = error.response.json()["error"]
            assert set(body) == {"message", "type", "param", "code"}, body
            assert "is not healthy" in body["message"], (model, stream, body)
