"""Budgets in time: each budget-table row's expected latency and throughput on this device.

The package's budget table gives, per row, the share of images leaving at each exit
(``exit_fractions``, measured at calibration); the engine's stage cost model, seeded by the
warm-up on the serving device, gives each stage's seconds at a batch size. Together they turn
a row's FLOPs fraction into what an operator sizes by: milliseconds per image and images/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.package import BudgetEntry
from service.engine.costs import StageCosts


@dataclass(frozen=True)
class BudgetTime:
    """Expected time of one budget row on the serving device.

    Attributes:
        ms_per_image: mean compute of an image sent alone (batch 1), over the row's exits.
        images_per_s: images one engine worker answers per second in full batches of
            ``max_batch_size`` that shrink at each exit (the default batching mode).
    """

    budget: float
    ms_per_image: float
    images_per_s: float


def reach_fractions(exit_fractions: list[float]) -> list[float]:
    """Share of images that run stage ``k``: those leaving at exit ``k`` or later. ``[K]``."""
    return [sum(exit_fractions[k:]) for k in range(len(exit_fractions))]


def budget_time(row: BudgetEntry, costs: StageCosts, max_batch_size: int) -> BudgetTime | None:
    """``row``'s expected time from the stage costs; None without exit fractions or timings."""
    if row.exit_fractions is None:
        return None
    reach = reach_fractions(row.exit_fractions)
    alone_s = sum(r * costs.estimate(k, 1) for k, r in enumerate(reach))
    # A full batch runs stage k on the reach[k] share of its images: a fractional batch on the
    # cost model's line ``fixed + per_image * n``.
    batch_s = sum(
        costs.fixed(k) + (costs.estimate(k, 1) - costs.fixed(k)) * r * max_batch_size
        for k, r in enumerate(reach)
        if r > 0
    )
    if alone_s <= 0.0 or batch_s <= 0.0:  # no warm-up: the cost model holds no timing yet
        return None
    return BudgetTime(row.budget, 1000.0 * alone_s, max_batch_size / batch_s)


def budget_times(
    rows: list[BudgetEntry], costs: StageCosts, max_batch_size: int
) -> dict[float, BudgetTime]:
    """Budget -> its expected time, for every row that has one."""
    times = (budget_time(row, costs, max_batch_size) for row in rows)
    return {t.budget: t for t in times if t is not None}
