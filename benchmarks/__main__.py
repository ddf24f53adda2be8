"""`python -m benchmarks`: the suite's command line."""

import sys

from benchmarks.cli import main

sys.exit(main(sys.argv[1:]))
