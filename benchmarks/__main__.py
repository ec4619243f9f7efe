"""``python -m benchmarks`` (``make bench``) runs the serving benchmark."""

import sys

from benchmarks.serving import main

sys.exit(main())
