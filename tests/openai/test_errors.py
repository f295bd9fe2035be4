"""Each error status in OpenAI's shape, as the `openai` client sees it: 400, 401, 404, 429 on shed load.

Shed load is reached through the embedder's queue (Triton's queue policy) and through the engine's
waiting queue behind the public `llm` model (both cut small in this stack's repository copy).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Hello"}]


def assert_openai_shape(error: openai.APIStatusError, status: int, param: str | None = None):
    assert error.status_code == status
    body = error.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    if param is not None:
        assert body["param"] == param, body


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"made_up_field": 1}, "made_up_field"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_requests_are_400_naming_the_field(client, llm_id, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=llm_id, messages=MESSAGES, max_tokens=4, extra_body=extra)
    assert_openai_shape(caught.value, 400, param)


def test_other_400s(stack, client, llm_id):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=llm_id, prompt=["two", "prompts"], max_tokens=4)
    assert_openai_shape(caught.value, 400, "prompt")
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=llm_id, input="an LLM is not an embedder")
    assert_openai_shape(caught.value, 400, "model")
    with pytest.raises(openai.BadRequestError) as caught:  # rag's own check (an empty query), through Triton
        client.chat.completions.create(model="rag", messages=[{"role": "user", "content": "   "}], max_tokens=4)
    assert_openai_shape(caught.value, 400)
    assert "query" in caught.value.response.json()["error"]["message"]
    malformed = httpx.post(
        f"{stack.base_url}/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert_openai_shape(caught.value, 404, "model")
    assert caught.value.response.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_missing_or_wrong_key_is_401_on_every_route(stack, llm_id):
    wrong = openai.OpenAI(base_url=stack.base_url, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=llm_id, messages=MESSAGES)
    assert_openai_shape(caught.value, 401)
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/health"):
        method = httpx.get if path in ("/v1/models", "/health") else httpx.post
        response = method(stack.url + path)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", path
    assert httpx.get(stack.url + "/").status_code == 200  # the page itself holds no key


def test_embedder_shed_load_is_429(stack, client):
    """Triton's own queue policy: more texts at once than the embedder's queue holds (cut to 4 here)
    are refused UNAVAILABLE ("Exceeds maximum queue size"), which the service answers with 429."""
    texts = [f"text number {i} about files and streams" for i in range(96)]
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="embedder", input=texts)
    assert_openai_shape(caught.value, 429)
    assert caught.value.response.headers["retry-after"]
    assert _serves_again(client, texts[:2]), "the embedder kept refusing after its queue drained"


def _serves_again(client, texts, timeout_s: float = 60.0) -> bool:
    """Once the refused burst's queued part has run, the embedder answers again (429 until then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return len(client.embeddings.create(model="embedder", input=texts).data) == len(texts)
        except openai.RateLimitError:
            time.sleep(0.5)
    return False


def test_llm_shed_load_is_429_and_the_llm_serves_again(stack, client, llm_id):
    """A burst of 48 chat streams at an engine whose waiting queue holds 4 (and 32 running): the
    ones the engine cannot queue are refused UNAVAILABLE by the generator, relayed by the `llm`
    router, and answered 429 in OpenAI's shape; every other one completes. Afterwards nothing is
    held and a plain request is served. (Such a burst once crashed tritonserver 2.51: README,
    Security and limits, "The crash".)"""

    def ask(index: int):
        try:
            stream = client.chat.completions.create(
                model=llm_id,
                messages=[{"role": "user", "content": f"Count to ten, take {index}."}],
                max_tokens=16,
                stream=True,
            )
            return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        except openai.APIStatusError as error:
            return error

    with ThreadPoolExecutor(48) as pool:
        outcomes = list(pool.map(ask, range(48)))
    refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    assert refused, "48 streams at once fitted a waiting queue of 4: nothing was shed"
    for error in refused:
        assert_openai_shape(error, 429)
    assert all(isinstance(o, str) and o for o in outcomes if o not in refused), outcomes
    assert stack.wait_for(lambda: stack.metric("tritonrag_kv_cache_usage_perc") == 0.0)
    again = client.chat.completions.create(model=llm_id, messages=MESSAGES, max_tokens=4)
    assert again.choices[0].message.content
