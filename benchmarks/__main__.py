"""``python -m benchmarks`` (``make bench``): the IMTA ablation, the serving figures, BENCHMARKS.md.

The serving grid alone stays available as ``python -m benchmarks.serving``.
"""

import sys

from benchmarks.pipeline import main

sys.exit(main())
