"""The passages behind a `rag` answer's sources, read from the index's docstore for the page and API users.

`rag` names its sources by chunk id, title and score (what the pipeline hands on); the service adds
each passage's text from the same docstore the retriever reads, so that a reader can check a
citation. Without the docstore (the service run away from the artifacts), sources keep their three
fields and `text` is left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tritonrag.retrieval.docstore import DocStore

log = logging.getLogger(__name__)


class PassageLookup:
    """Adds `text` to sources from the docstore, read-only; a missing store or chunk leaves a source as it is.

    The index home's `docstore.sqlite` is a link to the served version's store (retrieval.versions):
    when an index update moves the link, the next lookup opens the new store.
    """

    def __init__(self, docstore_path: Path):
        self.path = Path(docstore_path)
        self.opened: Path | None = None
        self.store: DocStore | None = None
        if not self.path.exists():
            log.warning("no docstore at %s: rag sources are served without their passages' text", self.path)

    def _current(self) -> DocStore | None:
        target = self.path.resolve()
        if target != self.opened:
            self.store = DocStore(target, readonly=True) if target.exists() else None
            self.opened = target
        return self.store

    def with_text(self, sources: list[dict] | None) -> list[dict] | None:
        if sources is None or self._current() is None:
            return sources
        return [self._add_text(source) for source in sources]

    def _add_text(self, source: dict) -> dict:
        chunk_id = str(source.get("id", ""))
        doc_id = chunk_id.rsplit("#", 1)[0]  # chunk ids are `<doc_id>#<n>` (retrieval.corpus)
        for passage in self.store.passages_of(doc_id) if self.store else ():
            if passage.chunk_id == chunk_id:
                return {**source, "text": passage.text, "source": passage.source}
        return source
