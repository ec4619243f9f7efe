"""The budget table from the validation front: distinct, spread, cheapest exit to full network."""

from __future__ import annotations

import pytest
import torch

from models.exit_policy import NEVER_EXIT
from training.calibrate import OperatingPoint, simulate
from training.front import FrontRow, front_table, largest_drop, pareto_front, spread

from .test_calibrate import FRACTIONS, _scores


def _pt(compute: float, accuracy: float) -> tuple[torch.Tensor, OperatingPoint]:
    return torch.zeros(1), OperatingPoint([0.0], compute, accuracy, [1.0])


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [_pt(0.3, 0.80), _pt(0.5, 0.79), _pt(0.5, 0.85), _pt(0.7, 0.85), _pt(0.9, 0.90)]
    front = pareto_front(pts)
    assert [(p.compute, p.accuracy) for _, p in front] == [(0.3, 0.80), (0.5, 0.85), (0.9, 0.90)]


def test_spread_keeps_both_ends_and_fills_the_largest_gaps() -> None:
    front = [_pt(c, a) for c, a in [(0.1, 0.5), (0.11, 0.51), (0.12, 0.52), (0.5, 0.8), (1.0, 0.9)]]
    assert spread(front, 3) == [0, 3, 4]  # the point far from both ends, not the near-duplicates
    assert spread(front, 10) == [0, 1, 2, 3, 4]


def test_front_table_offers_distinct_points_from_the_first_exit_to_the_full_network() -> None:
    val, test = _scores(3000, 0), _scores(3000, 1)
    rows = front_table(val, test, FRACTIONS, n_points=8)
    budgets = [r.budget for r in rows]
    assert len(rows) >= 6 and budgets == sorted(set(budgets))
    # cheapest: everyone leaves at the first exit; last: every exit off
    assert rows[0].val.compute == pytest.approx(float(FRACTIONS[0]))
    assert rows[-1].budget == 1.0 and rows[-1].val.thresholds == [NEVER_EXIT] * len(FRACTIONS)
    for r in rows[:-1]:
        assert r.val.compute <= r.budget < r.val.compute + 1e-3  # its compute, rounded up
    # the front: validation accuracy rises with every row below the full network
    accs = [r.val.accuracy for r in rows[:-1]]
    assert accs == sorted(accs) and len(set(accs)) == len(accs)
    # every row is what its thresholds do on the test split
    for r in rows:
        again = simulate(test, FRACTIONS, torch.tensor(r.val.thresholds))
        assert again.accuracy == pytest.approx(r.test.accuracy)


def test_largest_drop_is_the_worst_fall_to_the_next_larger_budget() -> None:
    def row(budget: float, acc: float) -> FrontRow:
        return FrontRow(budget, _pt(budget, acc)[1], _pt(budget, acc)[1])

    assert largest_drop(
        [row(0.2, 0.80), row(0.4, 0.85), row(0.6, 0.83), row(1.0, 0.90)]
    ) == pytest.approx(0.02)
    assert largest_drop([row(0.2, 0.80), row(1.0, 0.90)]) == 0.0
