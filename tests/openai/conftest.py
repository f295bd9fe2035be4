"""One real tritonserver and one OpenAI service in front of it, shared by the tests of this folder.

The server runs a copy of the model repository whose only change is the embedder's dynamic-batching
queue bound, cut from 128 to 4 requests so that the shed-load test fills it with one call of a few
dozen texts; the refusal it then sees is Triton's own (UNAVAILABLE from the queue policy). The service
runs as `python -m tritonrag.openai` in its own process with an API key, as a user would start it.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from openai_stack import running_stack


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent and "stack" in item.fixturenames:
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("openai"), "openai") as running:
        yield running


@pytest.fixture(scope="session")
def client(stack):
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def llm_id(client) -> str:
    """The LLM's model id (the Triton name of the public LLM model)."""
    return next(m.id for m in client.models.list().data if m.model_extra.get("kind") == "llm")
