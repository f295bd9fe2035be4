"""`python -m tritonrag_bench`: the benchmark's command line (tritonrag_bench.cli)."""

import sys

from tritonrag_bench.cli import main

sys.exit(main())
