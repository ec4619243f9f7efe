"""The pre-registered tests of the IMTA factorial (docs/imta.md), on per-image correctness.

Everything here is pure: inputs are boolean correctness arrays ``[S, K, N]`` (seeds, exits, test
images) of two arms, paired by seed index (seed s of arm A against seed s of arm B, the same
stage-1 initialisation and data order) and by image (the same held-back test images).

- McNemar's exact test per exit, on the discordant images of one seed or summed over the seeds
  (the seeds are strata of matched pairs; summing their discordant counts is the stratified form).
  The test itself is :func:`training.compare.mcnemar_exact_p`, the one used by ``compare``.
- Holm's step-down adjustment over the K exits of one comparison (the family of per-exit tests).
- A two-level paired bootstrap of the seed-averaged difference: each resample draws the seeds
  with replacement and, once, the test images with replacement (the same images for every seed:
  all seeds are scored on one fixed set of images, so their errors are correlated through them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from training.compare import mcnemar_exact_p

Bool3 = NDArray[np.bool_]  # [S, K, N]


@dataclass(frozen=True)
class McNemar:
    """One exit of A against B: images only A gets right, only B, and the exact two-sided p."""

    only_a: int
    only_b: int
    p_value: float


def mcnemar_per_exit(right_a: Bool3, right_b: Bool3) -> list[McNemar]:
    """Exact McNemar per exit on discordant counts summed over seeds.

    Args:
        right_a, right_b: ``[S, K, N]`` correctness (pass ``x[s:s+1]`` for one seed).
    """
    _check_paired(right_a, right_b)
    only_a = (right_a & ~right_b).sum(axis=(0, 2))
    only_b = (right_b & ~right_a).sum(axis=(0, 2))
    return [
        McNemar(int(a), int(b), mcnemar_exact_p(int(a), int(b)))
        for a, b in zip(only_a, only_b, strict=True)
    ]


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given): the family-wise error stays <= alpha when
    each adjusted p is compared with alpha (Holm 1979)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Interval:
    """Point estimate, percentile confidence interval and bootstrap two-sided p (fractions)."""

    estimate: float
    low: float
    high: float
    p_value: float


def paired_bootstrap(
    right_a: Bool3,
    right_b: Bool3,
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 500,
) -> list[Interval]:
    """Bootstrap of A - B, seed-averaged: one :class:`Interval` per exit, then one for the mean
    over exits (``K + 1`` in all), as accuracy fractions.

    Each resample draws S seed pairs with replacement and N images with replacement, and takes
    the mean over the drawn seeds of the accuracy difference on the drawn images. The p-value is
    the percentile-bootstrap one: twice the smaller share of resamples on either side of zero.
    """
    _check_paired(right_a, right_b)
    s, k, n = right_a.shape
    # diff[s, i, j]: per image, A's correctness minus B's at exit j; the last column their sum.
    # Integer counts throughout, divided once at the end: a certain difference stays exact.
    # (Whole numbers held as float64 are exact below 2**53, and BLAS multiplies them fast.)
    diff = right_a.astype(np.float64) - right_b.astype(np.float64)
    diff = np.concatenate([diff, diff.sum(axis=1, keepdims=True)], axis=1).transpose(0, 2, 1)
    scale = np.array([s * n] * k + [s * n * k], dtype=np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty((resamples, k + 1))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        images = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(
            np.float64
        )  # [b, N] times each image drawn
        seeds = rng.multinomial(s, np.full(s, 1.0 / s), size=b)  # [b, S] times each seed drawn
        per_seed = np.stack([images @ diff[i] for i in range(s)], axis=1)  # [b, S, K+1]
        stats[start : start + b] = np.einsum("bs,bsj->bj", seeds, per_seed) / scale
    point = diff.sum(axis=(0, 1)) / scale
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail], axis=0)
    below, above = (stats <= 0).mean(axis=0), (stats >= 0).mean(axis=0)
    p = np.minimum(1.0, 2 * np.minimum(below, above))
    return [Interval(float(point[j]), float(low[j]), float(high[j]), float(p[j])) for j in range(k + 1)]


def _check_paired(right_a: Bool3, right_b: Bool3) -> None:
    if right_a.shape != right_b.shape or right_a.ndim != 3:
        raise ValueError(
            f"correctness arrays must both be [seeds, exits, images]: {right_a.shape} vs {right_b.shape}"
        )
