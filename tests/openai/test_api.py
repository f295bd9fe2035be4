"""The real `openai` client against the real service and tritonserver: models, chat, completions, rag, embeddings."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from transformers import AutoTokenizer

from polling import settled
from tritonrag.metrics import GENERATION_TOKENS, PROMPT_TOKENS
from tritonrag.paths import generator_weights_dir
from tritonrag_clients.streaming import StreamingClient, collect, generator_inputs

QUESTION = "How do I read a file line by line?"
MESSAGES = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(generator_weights_dir()))


def triton_text(stack, model: str, prompt: str, sampling: dict) -> str:
    """The same generation through Triton's own gRPC stream (tritonrag_clients), for comparison."""
    with StreamingClient(stack.triton.grpc_url) as triton:
        return collect(triton.stream(model, generator_inputs(prompt, sampling, stream=True)))[0]


def test_models_lists_the_llm_rag_and_the_embedder(client, llm_id):
    models = {m.id: m.model_extra["kind"] for m in client.models.list().data}
    assert models == {llm_id: "llm", "rag": "rag", "embedder": "embedding"}
    assert client.models.retrieve("rag").id == "rag"


def test_chat_greedy_equals_the_triton_path(stack, client, llm_id, tokenizer):
    reply = client.chat.completions.create(model=llm_id, messages=MESSAGES, **GREEDY)
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert reply.choices[0].message.content == triton_text(stack, llm_id, prompt, GREEDY)
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_completion_greedy_equals_the_triton_path(stack, client, llm_id):
    prompt = "The capital of France is"
    reply = client.completions.create(model=llm_id, prompt=prompt, **GREEDY)
    assert reply.choices[0].text == triton_text(stack, llm_id, prompt, GREEDY)
    echoed = client.completions.create(model=llm_id, prompt=prompt, echo=True, **GREEDY)
    assert echoed.choices[0].text == prompt + reply.choices[0].text


def test_usage_is_the_engines_token_count(stack, client, llm_id, tokenizer):
    """prompt/completion tokens equal what the engine counted (its Prometheus counters) and the tokenizer's count."""
    prompt = "Write a sentence about the sea."
    counts = lambda: (stack.metric(PROMPT_TOKENS.name), stack.metric(GENERATION_TOKENS.name))  # noqa: E731
    before = settled(counts)
    reply = client.completions.create(
        model=llm_id, prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    after = settled(counts)  # the engine's counters reach /metrics a moment after the reply
    usage = reply.usage
    assert usage.completion_tokens == 12 == after[1] - before[1]
    assert usage.prompt_tokens == after[0] - before[0] == len(tokenizer(prompt)["input_ids"])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reply.choices[0].finish_reason == "length"


def test_streamed_chat_is_the_same_answer_with_usage_at_the_end(client, llm_id):
    whole = client.chat.completions.create(model=llm_id, messages=MESSAGES, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model=llm_id, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "the answer did not stream"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_streamed_completion_without_usage_unless_asked(client, llm_id):
    chunks = list(client.completions.create(model=llm_id, prompt="One, two, three,", stream=True, **GREEDY))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_and_max_completion_tokens(client, llm_id):
    counted = client.completions.create(model=llm_id, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0)
    assert "," in counted.choices[0].text
    stopped = client.completions.create(model=llm_id, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=",")
    assert "," not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model=llm_id, messages=MESSAGES, max_completion_tokens=3, temperature=0)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


def test_seed_makes_sampling_repeatable(client, llm_id):
    ask = dict(model=llm_id, messages=MESSAGES, max_tokens=16, temperature=1.0, top_p=0.95)
    first = client.chat.completions.create(seed=7, **ask).choices[0].message.content
    assert client.chat.completions.create(seed=7, **ask).choices[0].message.content == first


def test_rag_answers_with_its_sources(client):
    reply = client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=24
    )
    sources = reply.model_extra["sources"]
    assert reply.choices[0].message.content.strip()
    assert sources and all({"id", "title", "score", "text"} <= set(s) for s in sources)
    assert all(s["text"].strip() for s in sources), "the passages' text comes from the docstore"


def test_rag_stream_carries_sources_first_and_last(client):
    chunks = list(
        client.chat.completions.create(
            model="rag", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16, stream=True
        )
    )
    with_sources = [i for i, c in enumerate(chunks) if c.model_extra.get("sources")]
    content = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content]
    assert content and with_sources[0] <= content[0] and with_sources[-1] == len(chunks) - 1
    assert chunks[with_sources[0]].model_extra["sources"] == chunks[-1].model_extra["sources"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_rag_completion_and_passages(client):
    reply = client.completions.create(
        model="rag", prompt=QUESTION, max_tokens=8, temperature=0, extra_body={"passages": 2}
    )
    assert len(reply.model_extra["sources"]) == 2 and reply.choices[0].text


def test_embeddings_are_normalised_and_meaningful(client):
    texts = ["How do I open a file?", "Reading a file in Python", "The weather is sunny today"]
    reply = client.embeddings.create(model="embedder", input=texts)
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > len(texts)
    raw = client.with_raw_response.embeddings.create(model="embedder", input=texts[0], encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(raw.http_response.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-6)
