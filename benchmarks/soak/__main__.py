"""`python -m benchmarks.soak`: the soak's command line."""

import sys

from benchmarks.soak.cli import main

sys.exit(main())
