"""Documents and chunks: the standard library's documentation or a folder, cut along its structure.

The default corpus is the running interpreter's own documentation: every pydoc topic (the
language reference sections `help()` shows) and one document per public API entry of the
standard library (tritonrag.retrieval.stdlib_docs: modules, classes, functions, methods), so
a question about `functools.lru_cache` can find that entry, titled with its qualified name.

Chunks follow the structure: a document that fits the embedder's window (256 word pieces,
title included) is one chunk; a longer one is cut between paragraphs, packing consecutive
paragraphs up to the window; a paragraph longer than the window is cut into overlapping word
windows sized from its own word-piece density. `chunk()` (fixed word windows) remains for
`--chunking window`. Measured on the old topic corpus: 112-word windows with 24 words of
overlap gave the best MRR@10 among 96/128/160-word windows, hence the window defaults.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tritonrag.errors import InvalidInput

DEFAULT_CHUNK_WORDS = 112
DEFAULT_OVERLAP_WORDS = 24
DEFAULT_MAX_TOKENS = 254  # the embedder's 256 word pieces less [CLS] and [SEP]
WORD_PIECES_PER_WORD = 2.0  # the estimate when no tokenizer is given (pydoc text averages ~1.7)
CHUNKINGS = ("structured", "window")
# Modules of the smaller corpus (`--corpus core`): the ones a typical program imports.
CORE_MODULES = (
    "argparse asyncio base64 collections collections.abc contextlib copy csv dataclasses datetime decimal enum "
    "functools glob gzip hashlib heapq http.client http.server io itertools json logging logging.handlers math "
    "multiprocessing os os.path pathlib pickle queue random re shutil socket sqlite3 statistics string "
    "subprocess sys tarfile tempfile textwrap threading time traceback typing unittest unittest.mock "
    "urllib.parse urllib.request uuid zipfile builtins concurrent.futures operator struct secrets shlex "
    "fnmatch inspect pprint signal time timeit weakref warnings xml.etree.ElementTree zoneinfo"
).split()

TokenCounter = Callable[[str], int]
_WORD = re.compile(r"\S+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Document:
    """One source document; doc_id is unique within a corpus."""

    doc_id: str
    title: str
    source: str
    text: str


@dataclass(frozen=True)
class Chunk:
    """A window of a document; `start` is its character offset, so text == doc.text[start:start+len(text)]."""

    chunk_id: str
    doc_id: str
    title: str
    source: str
    text: str
    start: int


def passage_text(title: str, text: str) -> str:
    """What the embedder and rerankers read for a chunk: its document title, then its text."""
    return f"{title}\n{text}" if title else text


def chunk(
    document: Document,
    max_words: int = DEFAULT_CHUNK_WORDS,
    overlap_words: int = DEFAULT_OVERLAP_WORDS,
) -> list[Chunk]:
    """Split a document into windows of max_words words, consecutive windows sharing overlap_words.

    The last window ends at the document's last word; no window lies inside the previous one.
    Chunk ids are `<doc_id>#<n>`, so the same document and settings always give the same ids.
    """
    if max_words < 1 or not 0 <= overlap_words < max_words:
        raise InvalidInput(f"need max_words >= 1 and 0 <= overlap_words < max_words, got {max_words}/{overlap_words}")
    spans = [m.span() for m in _WORD.finditer(document.text)]
    stride = max_words - overlap_words
    chunks = []
    for n, first in enumerate(range(0, max(len(spans) - overlap_words, 1), stride)):
        if first >= len(spans):
            break
        last = min(first + max_words, len(spans)) - 1
        begin, end = spans[first][0], spans[last][1]
        chunks.append(
            Chunk(
                f"{document.doc_id}#{n}",
                document.doc_id,
                document.title,
                document.source,
                document.text[begin:end],
                begin,
            )
        )
    return chunks


def load_folder(path: str | Path) -> list[Document]:
    """Read every .txt, .md and .jsonl file under path (recursively, sorted by path).

    doc_id is the file's path relative to the folder; a .jsonl line's doc_id is its `id` field,
    else `<relative path>:<line number>`.
    """
    root = Path(path)
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a folder")
    docs: list[Document] = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if file.suffix in (".txt", ".md"):
            docs.extend(_text_document(file, rel))
        elif file.suffix == ".jsonl":
            docs.extend(_jsonl_documents(file, rel))
    return docs


def _text_document(file: Path, rel: str) -> Iterator[Document]:
    text = file.read_text(encoding="utf-8")
    if text.strip():
        title = _markdown_title(text) if file.suffix == ".md" else ""
        yield Document(rel, title or file.stem, str(file), text)


def _markdown_title(text: str) -> str:
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            return match.group(1)
    return ""


def _jsonl_documents(file: Path, rel: str) -> Iterator[Document]:
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{file}:{number}: need a JSON object with a 'text' field ({exc})") from exc
        doc_id = str(record.get("id") or f"{rel}:{number}")
        yield Document(doc_id, str(record.get("title") or doc_id), f"{file}:{number}", str(text))


def estimate_tokens(text: str) -> int:
    """Word pieces of text without a tokenizer: WORD_PIECES_PER_WORD per word (an overestimate)."""
    return int(len(text.split()) * WORD_PIECES_PER_WORD) + 1


def paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank paragraph (blocks between blank lines), stripped, in order."""
    spans, at = [], 0
    for brk in [*_PARAGRAPH_BREAK.finditer(text), None]:
        end = brk.start() if brk else len(text)
        block = text[at:end]
        if block.strip():
            lead = len(block) - len(block.lstrip())
            spans.append((at + lead, at + len(block.rstrip())))
        at = brk.end() if brk else end
    return spans


def chunk_structured(
    document: Document,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    count_tokens: TokenCounter = estimate_tokens,
    overlap_words: int = DEFAULT_OVERLAP_WORDS,
) -> list[Chunk]:
    """Whole document if title + text fit max_tokens; else packed paragraphs; else word windows.

    Every chunk is a slice of the document (text == doc.text[start:start+len(text)]) and ids are
    `<doc_id>#<n>`, as for chunk().
    """
    budget = max(max_tokens - count_tokens(document.title), 16)
    spans: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    used = 0
    for start, end in paragraphs(document.text):
        cost = count_tokens(document.text[start:end])
        if current and used + cost + 1 <= budget:
            current, used = (current[0], end), used + cost + 1
            continue
        if current:
            spans.append(current)
        if cost <= budget:
            current, used = (start, end), cost
        else:
            spans.extend(_windows(document.text, start, end, cost, budget, overlap_words))
            current, used = None, 0
    if current:
        spans.append(current)
    return [
        Chunk(f"{document.doc_id}#{n}", document.doc_id, document.title, document.source, document.text[s:e], s)
        for n, (s, e) in enumerate(spans)
    ]


def _windows(text: str, start: int, end: int, cost: int, budget: int, overlap_words: int) -> list[tuple[int, int]]:
    """Word windows over text[start:end] sized so that each fits budget at this block's word-piece density."""
    words = [(start + m.start(), start + m.end()) for m in _WORD.finditer(text[start:end])]
    per_window = max(8, int(budget * len(words) / max(cost, 1) * 0.9))
    overlap = min(overlap_words, per_window // 4)
    spans = []
    for first in range(0, max(len(words) - overlap, 1), per_window - overlap):
        last = min(first + per_window, len(words)) - 1
        spans.append((words[first][0], words[last][1]))
    return spans


def chunk_all(
    documents: Iterable[Document],
    max_words: int = DEFAULT_CHUNK_WORDS,
    overlap_words: int = DEFAULT_OVERLAP_WORDS,
    chunking: str = "window",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    count_tokens: TokenCounter = estimate_tokens,
) -> list[Chunk]:
    """Chunk every document, in order: `window` (chunk()) or `structured` (chunk_structured())."""
    if chunking not in CHUNKINGS:
        raise InvalidInput(f"chunking must be one of {CHUNKINGS}, got {chunking!r}")
    if chunking == "window":
        return [c for doc in documents for c in chunk(doc, max_words, overlap_words)]
    return [c for doc in documents for c in chunk_structured(doc, max_tokens, count_tokens, overlap_words)]


def default_corpus(modules: Iterable[str] | None = None) -> list[Document]:
    """The standard library's documentation: every pydoc topic, then the API entries of `modules` (all public)."""
    return topic_documents() + api_documents(modules)


def topic_documents() -> list[Document]:
    """Every topic of the interpreter's `help()` (pydoc_data.topics); title = the topic's heading."""
    from pydoc_data.topics import topics

    return [
        Document(f"topic:{name}", _first_line(text) or name, f"pydoc_data.topics:{name}", text)
        for name, text in sorted(topics.items())
    ]


def api_documents(modules: Iterable[str] | None = None) -> list[Document]:
    """One document per API entry of the standard library, rendered by stdlib_docs in a subprocess.

    The subprocess keeps the import side effects of ~300 modules out of this process.
    """
    command = [sys.executable, "-m", "tritonrag.retrieval.stdlib_docs"]
    if modules is not None:
        command += ["--modules", ",".join(modules)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"rendering the standard library docs failed: {result.stderr.strip()[-2000:]}")
    docs, seen = [], set()
    for line in result.stdout.splitlines():
        entry = json.loads(line)
        if entry["id"] not in seen:
            seen.add(entry["id"])
            docs.append(Document(entry["id"], entry["title"], f"pydoc:{entry['id']}", entry["text"]))
    return docs


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
