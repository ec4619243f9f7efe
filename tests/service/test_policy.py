"""Request options -> thresholds, and per-image exit decisions."""

from __future__ import annotations

import pytest
import torch

from models.exit_policy import NEVER_EXIT
from models.package import ModelPackage
from service.errors import InvalidOptionError
from service.policy import leaving_now, resolve_plan


def test_budget_picks_the_largest_row_not_above_it(reference_package: ModelPackage) -> None:
    m = reference_package.manifest
    rows = {r.budget: r.thresholds for r in m.budgets}
    assert list(resolve_plan(m, budget=0.6).thresholds) == pytest.approx(rows[0.6])
    assert list(resolve_plan(m, budget=0.79).thresholds) == pytest.approx(rows[0.6])
    assert list(resolve_plan(m, budget=0.8).thresholds) == pytest.approx(rows[0.8])
    assert resolve_plan(m, budget=1.0).thresholds == (NEVER_EXIT,) * 3


def test_defaults_threshold_and_max_exit(reference_package: ModelPackage) -> None:
    m = reference_package.manifest
    assert resolve_plan(m).budget == m.default_budget
    assert resolve_plan(m, default_budget=0.8).budget == 0.8
    plan = resolve_plan(m, budget=0.6, threshold=0.3, max_exit=1)
    assert plan.budget is None and plan.max_exit == 1
    assert plan.thresholds == (0.3,) * 3


@pytest.mark.parametrize(
    "options",
    [
        dict(budget=0.5),
        dict(budget=0.0),
        dict(budget=1.5),
        dict(max_exit=3),
        dict(max_exit=-1),
        dict(threshold=1.2),
    ],
)
def test_out_of_range_options_are_rejected(reference_package: ModelPackage, options: dict) -> None:
    with pytest.raises(InvalidOptionError):
        resolve_plan(reference_package.manifest, **options)


def test_budget_one_without_a_table_runs_to_the_end(reference_package: ModelPackage) -> None:
    bare = reference_package.manifest.model_copy(update={"budgets": [], "default_budget": None})
    assert resolve_plan(bare).thresholds == (NEVER_EXIT,) * 3
    with pytest.raises(InvalidOptionError, match="no budget table"):
        resolve_plan(bare, budget=0.5)


def test_leaving_now_uses_each_images_own_threshold_and_max_exit() -> None:
    conf = torch.tensor([0.5, 0.5, 0.2, 0.2])
    thr = torch.tensor([0.4, 0.6, 0.1, 0.9])
    max_exit = torch.tensor([2, 2, 2, 0])
    assert leaving_now(conf, thr, max_exit, 0, 3).tolist() == [True, False, True, True]
    assert leaving_now(conf, thr, max_exit, 2, 3).all()
