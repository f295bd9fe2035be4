"""Incremental detokenizer: token ids in, streamable text deltas out, with stop strings.

Deltas never split a UTF-8 character and, concatenated, equal
`tokenizer.decode(output_ids, skip_special_tokens=...)` (cut before a stop string).
Each step decodes a short window of recent tokens (vLLM's prefix/read offsets), so
the cost per token does not grow with the output length; `finish()` decodes the
whole output once to hand out whatever the window still held back.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any, Protocol


class Tokenizer(Protocol):
    """What the engine needs of a Hugging Face tokenizer: text in, ids out, and back."""

    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def decode(self, ids: Seq[int], skip_special_tokens: bool = ...) -> str: ...


REPLACEMENT = "\ufffd"  # what a partial UTF-8 character decodes to


class IncrementalDetokenizer:
    """Feed one token id at a time with `add`; call `finish` once at the end.

    `prompt_ids` is accepted for vLLM-style call sites but not used: the output is
    decoded on its own, exactly as `tokenizer.decode(output_ids)` would decode it.
    Stop strings are looked for once there are more than `min_tokens` output tokens, as in vLLM.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Seq[int] = (),
        stop: Seq[str] = (),
        skip_special_tokens: bool = True,
        min_tokens: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.skip_special_tokens = skip_special_tokens
        self.min_tokens = min_tokens
        self.output_ids: list[int] = []
        self.stopped = False  # a stop string was found; `text` ends before it
        self.stop_string: str | None = None
        self._text = ""  # decoded so far (cut at the stop string once found)
        self._emitted = 0  # characters of _text already handed out
        self._prefix_offset = 0  # window start: tokens before it are settled text
        self._read_offset = 0  # tokens before it have been decoded into _text

    @property
    def text(self) -> str:
        return self._text

    def add(self, token_id: int) -> str:
        """Append one token; return the text that is now safe to stream (may be "")."""
        if self.stopped:
            return ""
        self.output_ids.append(token_id)
        searched = len(self._text)
        self._text += self._decode_window()
        return self._release(searched, final=False)

    def finish(self) -> str:
        """The rest of the text: held-back characters and any partial character at the end."""
        if self.stopped:
            return ""
        searched = len(self._text)
        full = self._decode(self.output_ids)
        if full.startswith(self._text):
            self._text = full
        else:  # the window decode disagreed with the full decode; keep what was streamed consistent
            self._text += full[len(self._text) :]
        return self._release(searched, final=True)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens))

    def _decode_window(self) -> str:
        """New text of the latest tokens, or "" while they end inside a UTF-8 character."""
        ids = self.output_ids
        prefix = self._decode(ids[self._prefix_offset : self._read_offset])
        window = self._decode(ids[self._prefix_offset :])
        if len(window) <= len(prefix) or window.endswith(REPLACEMENT):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(ids)
        return window[len(prefix) :]

    def _release(self, searched: int, final: bool) -> str:
        """Cut at a stop string that ends past `searched`; hand out what cannot start one."""
        end = len(self._text)
        if self.stop:
            longest = max(len(s) for s in self.stop)
            start = max(0, searched - longest + 1)
            hits = [(i, s) for s in self.stop if (i := self._text.find(s, start)) >= 0]
            if hits and len(self.output_ids) > self.min_tokens:
                end, self.stop_string = min(hits)
                self.stopped = True
                self._text = self._text[:end]
            elif not final:
                end -= self._partial_stop_len()
        delta = self._text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self._text)), best, -1):
                if self._text.endswith(s[:k]):
                    best = k
                    break
        return best
