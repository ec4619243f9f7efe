"""``python -m benchmarks.imta``: the IMTA factorial's evaluation and report."""

import sys

from benchmarks.imta.cli import main

sys.exit(main())
