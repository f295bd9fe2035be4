"""tritonrag: a Triton Inference Server model repository and LLM engine for retrieval-augmented generation.

Importing it sets `GOMP_SPINCOUNT` (tritonrag.defaults says why) unless the environment has it: libgomp
reads it once, when torch loads, so it must happen before the first `import torch` of the process;
Triton's Python stubs import our models' modules before torch, and so does the benchmark.
"""

import os

from tritonrag.defaults import GOMP_SPINCOUNT

os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)

__version__ = "0.1.0"
