"""Threshold calibration: the geometric scheme, direct optimisation, the budget table."""

from __future__ import annotations

import torch

from models.exit_policy import NEVER_EXIT
from training.calibrate import (
    ExitScores,
    calibrate_budgets,
    fit_geometric,
    geometric_thresholds,
    optimise_thresholds,
    simulate,
)

FRACTIONS = torch.tensor([0.3, 0.5, 0.75, 1.0], dtype=torch.float64)


def _scores(n: int, seed: int) -> ExitScores:
    """Exits that get more accurate with depth; confidence correlates with correctness."""
    g = torch.Generator().manual_seed(seed)
    k = len(FRACTIONS)
    difficulty = torch.rand(n, generator=g)
    skill = torch.linspace(0.5, 0.9, k).view(k, 1)
    noise = torch.rand(k, n, generator=g) * 0.3
    correct = difficulty.view(1, n) + noise * 0.5 < skill + 0.1
    conf = torch.sigmoid(8 * (skill - difficulty.view(1, n) + noise - 0.2))  # no ties
    return ExitScores(conf=conf, correct=correct)


def test_geometric_exit_fractions_follow_p_powers() -> None:
    scores = _scores(4000, 0)
    p = 0.5
    t = geometric_thresholds(scores.conf, p)
    pt = simulate(scores, FRACTIONS, t)
    w = torch.tensor([p ** (i + 1) for i in range(4)])
    expected = (w / w.sum()).tolist()
    for got, want in zip(pt.exit_fractions[:-1], expected[:-1], strict=True):
        assert abs(got - want) < 0.01
    assert t[-1] == 0.0


def test_geometric_ties_then_a_short_pool_all_leave() -> None:
    """Ties at exit 0 take more than its share; exit 1 then lets all that remain leave.

    MSDNet's official ``dynamic_eval_find_threshold`` keeps exit 1's threshold at 1e8 (nobody
    leaves) when fewer samples remain than its target; ours keeps the exit shares closer to p^k.
    """
    n = 8
    conf = torch.tensor(
        [
            [0.9] * 7 + [0.1],  # seven tie at the top: all seven leave, the target was two
            [0.5] * 7 + [0.4],
            [0.0] * n,
            [0.0] * n,
        ]
    )
    scores = ExitScores(conf=conf, correct=torch.ones(4, n, dtype=torch.bool))
    t = geometric_thresholds(conf, 1.0)  # equal weights: a target of floor(8 / 4) = 2 per exit
    pt = simulate(scores, FRACTIONS, t)
    assert t[0] == conf[0, 0]
    assert pt.exit_fractions[0] == 7 / 8  # a threshold is ">=": every tie leaves
    assert t[1] == conf[1, 7]  # one sample left for a target of two: it leaves too
    assert pt.exit_fractions[1] == 1 / 8


def test_optimised_is_at_least_geometric_on_the_fitting_split() -> None:
    val = _scores(3000, 1)
    for budget in (0.45, 0.6, 0.8):
        geo = fit_geometric(val, FRACTIONS, budget)
        assert geo is not None
        opt = optimise_thresholds(val, FRACTIONS, budget, geo)
        g, o = simulate(val, FRACTIONS, geo), simulate(val, FRACTIONS, opt)
        assert o.compute <= budget + 1e-9
        assert o.accuracy >= g.accuracy


def test_budget_table_rows() -> None:
    val, test = _scores(2000, 2), _scores(2000, 3)
    rows = calibrate_budgets(val, test, FRACTIONS, (0.2, 0.5, 1.0))
    assert [r.budget for r in rows] == [0.5, 1.0]  # 0.2 is below the first exit's 0.3: infeasible
    last = rows[-1]
    assert last.optimised_val.thresholds == [NEVER_EXIT] * 4  # budget 1.0: no early exit at all
    assert last.optimised_test.exit_fractions == [0.0, 0.0, 0.0, 1.0]
    assert last.optimised_test.compute == 1.0
    assert rows[0].optimised_val.compute <= 0.5 + 1e-9
    assert abs(sum(rows[0].optimised_test.exit_fractions) - 1.0) < 1e-9
