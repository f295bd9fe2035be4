"""python -m tritonrag.openai: run the OpenAI-compatible service against a running tritonserver."""

import sys

from tritonrag.openai.app import main

sys.exit(main())
