"""Request options -> thresholds, and per-image exit decisions."""

from __future__ import annotations

import numpy as np
import pytest

from models.exit_policy import NEVER_EXIT
from models.package import ModelPackage
from service.errors import InvalidOptionError
from service.policy import leaving_now, resolve_plan
from service.schemas import InferenceOptions
from service.serving import parse_options


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
    assert resolve_plan(m, budget=1.0, default_budget=0.8).budget == 1.0  # the request's wins
    plan = resolve_plan(m, budget=0.6, threshold=0.3, max_exit=1)
    assert plan.budget is None and plan.max_exit == 1
    assert plan.thresholds == (0.3,) * 3


def test_the_guards_shift_tightens_budget_thresholds_only(reference_package: ModelPackage) -> None:
    m = reference_package.manifest
    shift = (0.05, 0.0, 0.1)
    row = resolve_plan(m, budget=0.6).thresholds
    assert resolve_plan(m, budget=0.6, shift=shift).thresholds == pytest.approx(
        [t + d for t, d in zip(row, shift, strict=True)]
    )
    default = resolve_plan(m, default_budget=0.8, shift=shift)
    assert default.budget == 0.8 and default.thresholds[0] == pytest.approx(
        resolve_plan(m, budget=0.8).thresholds[0] + 0.05
    )
    assert resolve_plan(m, threshold=0.5, shift=shift).thresholds == (0.5,) * 3  # the client's


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        (dict(budget=0.5), {"field": "budget", "min": 0.6, "max": 1.0}),
        (dict(budget=0.0), {"field": "budget", "min": 0.6, "max": 1.0}),
        (dict(max_exit=3), {"field": "max_exit", "min": 0, "max": 2}),
        (dict(max_exit=-1), {"field": "max_exit", "min": 0, "max": 2}),
    ],
)
def test_options_the_model_does_not_offer_name_the_allowed_range(
    reference_package: ModelPackage, options: dict, allowed: dict
) -> None:
    with pytest.raises(InvalidOptionError) as e:
        resolve_plan(reference_package.manifest, **options)
    assert {k: e.value.detail[k] for k in allowed} == allowed
    assert f"{allowed['min']}" in e.value.message


@pytest.mark.parametrize(
    "options",
    [dict(budget=0.0), dict(budget=1.5), dict(threshold=1.2), dict(threshold=-0.1), dict(top_k=0),
     dict(max_exit=-1), dict(deadline_ms=0), dict(bogus=1)],
)  # fmt: skip
def test_the_options_model_holds_the_schema_ranges(options: dict) -> None:
    with pytest.raises(InvalidOptionError, match=next(iter(options))):
        parse_options(options, InferenceOptions)


def test_strict_options_take_json_types_only() -> None:
    assert parse_options({"budget": 1, "max_exit": 0}, InferenceOptions, strict=True).budget == 1.0
    for bad in ({"budget": "0.5"}, {"budget": True}, {"max_exit": 1.0}):
        with pytest.raises(InvalidOptionError):
            parse_options(bad, InferenceOptions, strict=True)
    assert parse_options({"budget": "0.5"}, InferenceOptions).budget == 0.5  # query strings


def test_budget_one_without_a_table_runs_to_the_end(reference_package: ModelPackage) -> None:
    bare = reference_package.manifest.model_copy(update={"budgets": [], "default_budget": None})
    assert resolve_plan(bare).thresholds == (NEVER_EXIT,) * 3
    with pytest.raises(InvalidOptionError, match="no budget table"):
        resolve_plan(bare, budget=0.5)


def test_leaving_now_uses_each_images_own_threshold_and_max_exit() -> None:
    conf = np.array([0.5, 0.5, 0.2, 0.2])
    thr = np.array([0.4, 0.6, 0.1, 0.9])
    max_exit = np.array([2, 2, 2, 0])
    assert leaving_now(conf, thr, max_exit, 0, 3).tolist() == [True, False, True, True]
    assert leaving_now(conf, thr, max_exit, 2, 3).all()


def test_fallback_budget_order() -> None:
    """A request without a budget: the configured default, else the package's, else 1.0."""
    from types import SimpleNamespace

    from service.policy import fallback_budget

    with_default = SimpleNamespace(default_budget=0.5)
    without = SimpleNamespace(default_budget=None)
    assert fallback_budget(with_default, 0.7) == 0.7  # type: ignore[arg-type]
    assert fallback_budget(with_default, None) == 0.5  # type: ignore[arg-type]
    assert fallback_budget(without, None) == 1.0  # type: ignore[arg-type]
