"""``python -m benchmarks.imta``: the IMTA factorial's launcher, evaluation and report."""

import os
import sys

from benchmarks.imta.cli import main

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:
    # `status | head` closed the pipe early: that is the reader's choice, not an error.
    # Point stdout at devnull so the interpreter's final flush does not raise again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 0
sys.exit(code)
