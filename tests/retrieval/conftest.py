"""Shared fixtures for the retrieval tests: one embedder, a small document folder, a small built index."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]

SMALL_DOCS = {
    "python/loops.md": "# Loops in Python\n\nA for loop iterates over the items of any iterable, such as a list or a "
    "string. A while loop repeats its body as long as its condition stays true. Use break to leave a loop early "
    "and continue to skip to the next iteration.\n",
    "python/files.txt": "Reading files: open a file with open(path) inside a with statement so that it is closed "
    "automatically. Call read() for the whole content or iterate over the file object line by line.\n",
    "cooking/bread.md": "Baking bread\n\n## Dough\n\nMix flour, water, salt and yeast, knead the dough for ten "
    "minutes, let it rise for an hour, then bake it in a hot oven until the crust is brown.\n",
    "notes.jsonl": "\n".join(
        json.dumps(r)
        for r in [
            {
                "id": "garden",
                "title": "Gardening",
                "text": "Tomatoes need full sun, regular watering and a stake "
                "to climb. Plant them after the last frost.",
            },
            {
                "text": "The train to the airport leaves every fifteen minutes from platform two; buy a ticket "
                "at the machine before boarding."
            },
        ]
    )
    + "\n",
}


@pytest.fixture(scope="session")
def embedder():
    from tritonrag.retrieval.embedder import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def docs_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    for rel, text in SMALL_DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="session")
def build_script():
    """build/build_index.py imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("tritonrag_build_index", REPO / "build" / "build_index.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, docs_folder, build_script, embedder) -> Path:
    """An index home of SMALL_DOCS built by the build script with small word windows (several chunks a document)."""
    out = tmp_path_factory.mktemp("index") / "small"
    args = build_script.parse_args(
        [
            "--docs",
            str(docs_folder),
            "--out",
            str(out),
            "--chunking",
            "window",
            "--chunk-words",
            "24",
            "--overlap-words",
            "6",
        ]
    )
    build_script.run(args, embedder=embedder)
    return out
