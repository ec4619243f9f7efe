"""Pure exit decisions: request options -> per-exit thresholds, confidences -> who leaves now.

The rule itself is ``models.exit_policy`` (shared with calibration, so the service exits exactly
where calibration assumed, MSDNet section 5 "budgeted batch classification"). This module only
turns a request's options into thresholds and applies them per image, so that images with
different budgets can share one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from models.exit_policy import NEVER_EXIT, exits_now
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
) -> ExitPlan:
    """Thresholds for a request's options, checked against what this model offers.

    The options' own ranges (budget in (0, 1], threshold in [0, 1]) are the options model's
    (:class:`service.schemas.InferenceOptions`); this is the one place that checks them against
    the model: ``max_exit`` against its exits, ``budget`` against its budget table.
    ``threshold`` (one confidence for every exit) wins over ``budget``; without either, the
    service's ``default_budget``, else the package's, else 1.0 (every image to the last exit).

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
        budget = default_budget if default_budget is not None else manifest.default_budget
    if budget is None:
        budget = 1.0
    return ExitPlan(budget_thresholds(manifest, budget), max_exit, budget)


def budget_thresholds(manifest: Manifest, budget: float) -> tuple[float, ...]:
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


def leaving_now(conf: Tensor, thresholds: Tensor, max_exit: Tensor, k: int, num_exits: int) -> Tensor:
    """Boolean mask ``[N]`` of the images that leave at exit ``k``.

    Args:
        conf: ``[N]`` max-softmax confidence of each image at exit ``k``.
        thresholds: ``[N]`` each image's threshold for exit ``k`` (per image: mixed budgets).
        max_exit: ``[N]`` each image's deepest allowed exit.
    """
    return exits_now(conf, thresholds, is_last=k == num_exits - 1) | (max_exit <= k)
