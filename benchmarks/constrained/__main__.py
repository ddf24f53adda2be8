"""`python -m benchmarks.constrained`: the benchmark's command line."""

import sys

from benchmarks.constrained.cli import main

sys.exit(main(sys.argv[1:]))
