"""Incremental detokenizer with the generator's real tokenizer: UTF-8 safety and stop strings."""

from __future__ import annotations

import os
import random

import pytest

from tritonrag.engine.detokenizer import IncrementalDetokenizer
from tritonrag.paths import generator_weights_dir

WEIGHTS = generator_weights_dir()
pytestmark = pytest.mark.skipif(
    not (WEIGHTS / "tokenizer.json").exists(),
    reason=f"no generator tokenizer in {WEIGHTS}: run `python build/prepare_weights.py`",
)

MULTIBYTE = "héllo wörld 日本語 🙂 ok"


@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(WEIGHTS)


def stream(tokenizer, ids: list[int], stop: list[str] = ()) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, [1, 2, 3], stop)
    deltas = []
    for token_id in ids:
        deltas.append(detok.add(token_id))
        if detok.stopped:
            break
    deltas.append(detok.finish())
    return deltas, detok


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_multibyte_text_streams_without_broken_characters(tokenizer):
    ids = encode(tokenizer, MULTIBYTE)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some tokens hold partial characters
    deltas, detok = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == MULTIBYTE == detok.text
    assert not any("\ufffd" in d for d in deltas)


def test_special_tokens_are_skipped_and_text_matches_full_decode(tokenizer):
    ids = encode(tokenizer, "Hi there! ") + [2] + encode(tokenizer, " 🙂 done.") + [1]
    deltas, _ = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_partial_character_at_the_end_is_released_by_finish(tokenizer):
    ids = encode(tokenizer, "a 日本語")
    cut = next(k for k in range(1, len(ids)) if tokenizer.decode(ids[:k]).endswith("\ufffd"))
    deltas, detok = stream(tokenizer, ids[:cut])
    assert not any("\ufffd" in d for d in deltas[:-1]) and deltas[-1].endswith("\ufffd")
    assert "".join(deltas) == tokenizer.decode(ids[:cut]) == detok.text


def test_random_token_streams_equal_the_full_decode(tokenizer):
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 60))]
        deltas, _ = stream(tokenizer, ids)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_truncates_the_text(tokenizer):
    ids = encode(tokenizer, "The answer is 42. END of story, more text")
    deltas, detok = stream(tokenizer, ids, stop=["END"])
    assert detok.stopped and detok.stop_string == "END"
    assert "".join(deltas) == detok.text == "The answer is 42. "


def test_stop_string_prefix_is_held_back_until_disambiguated(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, [], ["<stop>"])
    emitted = ""
    for token_id in encode(tokenizer, "hello <sto"):
        emitted += detok.add(token_id)
    assert emitted == "hello "  # "<sto" could still become "<stop>"
    for token_id in encode(tokenizer, "ry"):
        emitted += detok.add(token_id)
    emitted += detok.finish()
    assert emitted == "hello <story" and not detok.stopped


def test_first_of_several_stop_strings_wins_and_later_tokens_are_ignored(tokenizer):
    ids = encode(tokenizer, "one two three four")
    deltas, detok = stream(tokenizer, ids, stop=["four", " two"])
    assert detok.text == "one" and "".join(deltas) == "one" and detok.stop_string == " two"
    assert detok.add(ids[0]) == "" and detok.finish() == ""
