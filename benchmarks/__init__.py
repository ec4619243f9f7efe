"""Benchmarks (not timed tests): ``python -m benchmarks.serving --help``."""
