"""`python -m benchmarks.speculative`: the benchmark's command line."""

import sys

from benchmarks.speculative.cli import main

sys.exit(main(sys.argv[1:]))
