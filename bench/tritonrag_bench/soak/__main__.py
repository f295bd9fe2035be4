"""`python -m tritonrag_bench.soak` (tritonrag_bench.soak.cli)."""

import sys

from tritonrag_bench.soak.cli import main

sys.exit(main())
