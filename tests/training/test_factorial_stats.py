"""The factorial's statistics against hand-computed values and constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.factorial.stats import holm, mcnemar_per_exit, paired_bootstrap


def _pairs(only_a: int, only_b: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """One exit's correctness ``[N]`` of A and B with the given counts of each kind of image."""
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return np.array(a), np.array(b)


def test_mcnemar_pools_discordant_counts_over_seeds() -> None:
    # Seed 0: 5 images only A gets right, 1 only B; seed 1: 3 and 1. Pooled: 8 vs 2, n = 10.
    a0, b0 = _pairs(5, 1, 10, 4)
    a1, b1 = _pairs(3, 1, 12, 4)
    right_a = np.stack([a0, a1])[:, None, :]  # [S=2, K=1, N=20]
    right_b = np.stack([b0, b1])[:, None, :]
    (m,) = mcnemar_per_exit(right_a, right_b)
    assert (m.only_a, m.only_b) == (8, 2)
    # Hand: 2 * P(Binomial(10, 1/2) <= 2) = 2 * (1 + 10 + 45) / 1024.
    assert m.p_value == pytest.approx(112 / 1024)
    (one,) = mcnemar_per_exit(right_a[:1], right_b[:1])
    assert (one.only_a, one.only_b) == (5, 1)
    assert one.p_value == pytest.approx(2 * (1 + 6) / 64)


def test_mcnemar_rejects_unpaired_shapes() -> None:
    with pytest.raises(ValueError, match="seeds, exits, images"):
        mcnemar_per_exit(np.ones((1, 2, 5), bool), np.ones((1, 2, 6), bool))


def test_holm_step_down() -> None:
    # Sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(1 * 0.04, 0.06): given order restored.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_of_a_certain_difference_has_no_width() -> None:
    right_a = np.ones((2, 2, 50), bool)
    right_b = np.zeros((2, 2, 50), bool)
    right_b[:, 1] = True  # exit 1: both right everywhere
    exit0, exit1, mean = paired_bootstrap(right_a, right_b, resamples=200)
    assert (exit0.estimate, exit0.low, exit0.high, exit0.p_value) == (1.0, 1.0, 1.0, 0.0)
    assert (exit1.estimate, exit1.low, exit1.high, exit1.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (mean.estimate, mean.low, mean.high) == pytest.approx((0.5, 0.5, 0.5))


def test_bootstrap_resamples_seeds() -> None:
    # Seed 0: A beats B on every image; seed 1: identical. Only the seed draw varies the
    # statistic: 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1].
    right_a = np.ones((2, 1, 40), bool)
    right_b = np.zeros((2, 1, 40), bool)
    right_b[1] = True
    exit0, _ = paired_bootstrap(right_a, right_b, resamples=4000)
    assert exit0.estimate == pytest.approx(0.5)
    assert (exit0.low, exit0.high) == (0.0, 1.0)
    assert exit0.p_value == pytest.approx(2 * 0.25, abs=0.05)


def test_bootstrap_interval_matches_the_normal_approximation_for_one_seed() -> None:
    # Per-image differences: +1 on 30 %, -1 on 10 %, 0 elsewhere: mean 0.2, sd 0.6, so the
    # standard error on 2,000 images is 0.6 / sqrt(2000) and the 95 % half-width 1.96 times it.
    n = 2000
    a, b = _pairs(600, 200, 700, 500)
    rng = np.random.default_rng(3)
    order = rng.permutation(n)
    exit0, _ = paired_bootstrap(a[order][None, None], b[order][None, None], resamples=10_000)
    half = 1.96 * 0.6 / np.sqrt(n)
    assert exit0.estimate == pytest.approx(0.2)
    assert exit0.low == pytest.approx(0.2 - half, abs=0.15 * half)
    assert exit0.high == pytest.approx(0.2 + half, abs=0.15 * half)
    assert exit0.p_value < 1e-3


def test_bootstrap_is_reproducible_for_a_fixed_seed() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 2, 3, 100)) < 0.7
    assert paired_bootstrap(a, b, resamples=300) == paired_bootstrap(a, b, resamples=300)
