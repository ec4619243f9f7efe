"""Pure exit decisions: a request's options -> its plan (thresholds), confidences -> who leaves now.

The one owner of both. :func:`resolve_plan` is the only place that turns options, the default
budget (the SLO controller's, else the service's, else the package's) and the accuracy guard's
shift into thresholds; the engine asks it for every request and for its published gauges, and
``GET /v1/models`` reports the budget of the plan it gives a request without options.
:func:`leaving_now` is the served exit rule, calibration's (``models.exit_policy.first_exit``,
MSDNet section 5 "budgeted batch classification") applied one exit at a time per image, so that
images with different budgets can share one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.exit_policy import NEVER_EXIT
from models.package import Manifest, governing_row
from service.errors import InvalidOptionError


@dataclass(frozen=True)
class ExitPlan:
    """How one request's images exit.

    Attributes:
        thresholds: ``K`` confidence thresholds, one per exit (above 1 disables an exit); plain
            floats, so that resolving options on the event loop touches no tensor.
        max_exit: the deepest exit any image may use (it takes everything left there).
        budget: the budget the thresholds came from; ``None`` when a threshold overrode it.
    """

    thresholds: tuple[float, ...]
    max_exit: int
    budget: float | None


def resolve_plan(
    manifest: Manifest,
    *,
    budget: float | None = None,
    threshold: float | None = None,
    max_exit: int | None = None,
    default_budget: float | None = None,
    shift: Sequence[float] = (),
) -> ExitPlan:
    """The plan of a request's options, checked against what this model offers.

    The options' own ranges (budget in (0, 1], threshold in [0, 1]) are the options model's
    (:class:`service.schemas.InferenceOptions`); this is the one place that checks them against
    the model: ``max_exit`` against its exits, ``budget`` against its budget table.

    Args:
        budget, threshold, max_exit: the request's options. ``threshold`` (one confidence for
            every exit) wins over ``budget``; without either, the default budget below.
        default_budget: the budget of a request that gives none: the SLO controller's current
            one, else the service's setting; unset, the package's, else 1.0 (every image to the
            last exit).
        shift: ``K`` amounts the accuracy guard raised each exit's threshold by; they apply to
            budget-derived thresholds only (a pinned threshold is the client's). Empty: none.

    Raises:
        InvalidOptionError: an exit the model does not have, or a budget below its table's rows;
            the message and ``detail`` give the allowed range.
    """
    k = manifest.num_exits
    if max_exit is None:
        max_exit = k - 1
    if not 0 <= max_exit < k:
        raise InvalidOptionError(
            f"max_exit must be in 0..{k - 1} for this model, got {max_exit}",
            detail={"field": "max_exit", "min": 0, "max": k - 1},
        )
    if threshold is not None:
        return ExitPlan((float(threshold),) * k, max_exit, None)
    if budget is None:
        budget = fallback_budget(manifest, default_budget)
    thresholds = _budget_thresholds(manifest, budget)
    if any(shift):
        thresholds = tuple(t + d for t, d in zip(thresholds, shift, strict=True))
    return ExitPlan(thresholds, max_exit, budget)


def fallback_budget(manifest: Manifest, default_budget: float | None) -> float:
    """The budget of a request that names none: ``default_budget`` (the controller's or the
    settings'), else the package's default, else 1.0 (every image to the last exit)."""
    if default_budget is not None:
        return default_budget
    return manifest.default_budget if manifest.default_budget is not None else 1.0


def _budget_thresholds(manifest: Manifest, budget: float) -> tuple[float, ...]:
    """The ``K`` thresholds of the package's budget table row for ``budget``.

    A budget between two rows uses the largest row not above it (never spend more than asked);
    budget 1.0 without a table row runs every image to the last exit (``governing_row``).
    """
    rows = manifest.budget_values
    row = governing_row(rows, budget)
    if row is not None:
        return tuple(float(t) for t in manifest.budget_entry(row).thresholds)
    if budget >= 1.0 - 1e-9:
        return (NEVER_EXIT,) * manifest.num_exits
    allowed = f"between {rows[0]} and 1.0" if rows else "1.0 (the package has no budget table)"
    raise InvalidOptionError(
        f"budget {budget} is below what this model offers; use a budget {allowed}",
        detail={"field": "budget", "min": rows[0] if rows else 1.0, "max": 1.0, "budgets": rows},
    )


def leaving_now(
    conf: np.ndarray, thresholds: np.ndarray, max_exit: np.ndarray, k: int, num_exits: int
) -> np.ndarray:
    """``[n]`` bool: the images that leave at exit ``k``.

    Args:
        conf: ``[n]`` max-softmax confidence of each image at exit ``k``.
        thresholds: ``[n]`` each image's threshold for exit ``k`` (per image: mixed budgets).
        max_exit: ``[n]`` each image's deepest allowed exit.

    NumPy on the host's arrays: a torch call per stage costs more than the comparison itself.
    ``tests/service/test_engine_vectorised.py`` checks it against calibration's ``first_exit``.
    """
    if k == num_exits - 1:
        return np.ones(len(conf), dtype=np.bool_)
    return (conf >= thresholds) | (max_exit <= k)
