"""Latency percentiles and the median of repeated runs: NumPy's, for every suite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = {"p50_ms": 50, "p95_ms": 95, "p99_ms": 99}


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 and the mean of request latencies given in seconds, in ms (NaN if none)."""
    if not len(seconds):
        return dict.fromkeys([*QUANTILES, "mean_ms"], float("nan"))
    p = 1e3 * np.percentile(seconds, list(QUANTILES.values()))
    return dict(zip(QUANTILES, map(float, p), strict=True)) | {"mean_ms": 1e3 * float(np.mean(seconds))}


def median_run(runs: Sequence[dict[str, Any]], key: str = "images_per_s") -> dict[str, Any]:
    """The run with the median ``key`` (the cores are shared: single runs are noisy), with every
    run's value in ``<key>_all`` in the order run and their range in ``<key>_range``."""
    ranked = sorted(runs, key=lambda r: r[key])
    return ranked[len(ranked) // 2] | {
        f"{key}_all": [round(r[key], 1) for r in runs],
        f"{key}_range": [ranked[0][key], ranked[-1][key]],
    }
