"""``python -m benchmarks`` (``make bench``): :mod:`benchmarks.pipeline`."""

import sys

from benchmarks.pipeline import main

sys.exit(main())
