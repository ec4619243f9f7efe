"""A budget table that trades: distinct points of the validation accuracy-compute front (pure).

The fixed budget grid of ``calibrate_budgets`` (0.2, 0.3, ..., 1.0) can resolve several budgets to
the same thresholds and leave nothing between its last point and the full network. Here the rows
are chosen from the front itself:

1. candidates: every geometric-sweep point, the optimised thresholds at a fine grid of budgets,
   and "everyone leaves at exit k" for every exit (the cheapest of them is the first exit);
2. the Pareto front on the validation split (no candidate both cheaper and more accurate);
3. ``n_points`` of it spread over the front (greedy farthest-point in compute and accuracy, each
   scaled to [0, 1]), the cheapest point always included;
4. the full network (budget 1.0, every exit off) as the last row.

A row's budget is its validation compute rounded up to 3 decimals, so a request's budget buys
the most accurate row whose budget is within it (the service takes the largest row not above).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.exit_policy import NEVER_EXIT
from training.calibrate import (
    ExitScores,
    OperatingPoint,
    geometric_sweep,
    optimise_thresholds,
    simulate,
)

GRID = 24  # budgets between the first exit's compute and 1.0 for optimised candidates


@dataclass(frozen=True)
class FrontRow:
    """One offered operating point: fitted on validation, scored on test."""

    budget: float
    val: OperatingPoint
    test: OperatingPoint


def single_exit_thresholds(k: int, exit_index: int) -> Tensor:
    """Thresholds that send every sample out at ``exit_index`` (earlier exits off)."""
    t = torch.full((k,), NEVER_EXIT)
    t[exit_index] = 0.0
    return t


def candidate_thresholds(val: ExitScores, fractions: Tensor, grid: int = GRID) -> list[Tensor]:
    """Step 1 of the module docstring: ``[K]`` threshold vectors."""
    k = len(fractions)
    out = [single_exit_thresholds(k, i) for i in range(k)]
    sweep = geometric_sweep(val, fractions)
    out += [t for _, t, _ in sweep]
    lo = float(fractions[0])
    for b in torch.linspace(lo, 1.0, grid + 2)[1:-1].tolist():
        feasible = [
            (pt.accuracy, -pt.compute, i) for i, (_, _, pt) in enumerate(sweep) if pt.compute <= b
        ]
        start = sweep[max(feasible)[2]][1] if feasible else single_exit_thresholds(k, 0)
        out.append(optimise_thresholds(val, fractions, b, start))
    return out


def pareto_front(points: list[tuple[Tensor, OperatingPoint]]) -> list[tuple[Tensor, OperatingPoint]]:
    """Points no other beats on both axes, by compute ascending (accuracy strictly rising)."""
    ordered = sorted(points, key=lambda tp: (tp[1].compute, -tp[1].accuracy))
    front: list[tuple[Tensor, OperatingPoint]] = []
    for t, pt in ordered:
        if not front or pt.accuracy > front[-1][1].accuracy:
            front.append((t, pt))
    return front


def spread(front: list[tuple[Tensor, OperatingPoint]], n_points: int) -> list[int]:
    """Indices of ``n_points`` front points spread over it (module docstring, step 3), sorted."""
    if len(front) <= n_points:
        return list(range(len(front)))
    c = torch.tensor([pt.compute for _, pt in front], dtype=torch.float64)
    a = torch.tensor([pt.accuracy for _, pt in front], dtype=torch.float64)
    xy = torch.stack([(c - c.min()) / max(float(c.max() - c.min()), 1e-12),
                      (a - a.min()) / max(float(a.max() - a.min()), 1e-12)], dim=1)  # fmt: skip
    chosen = [0, len(front) - 1]
    while len(chosen) < n_points:
        dist = torch.cdist(xy, xy[chosen]).min(dim=1).values
        dist[chosen] = -1
        chosen.append(int(dist.argmax()))
    return sorted(chosen)


def front_table(
    val: ExitScores, test: ExitScores, fractions: Tensor, n_points: int = 8
) -> list[FrontRow]:
    """The offered rows, cheapest first, the full network last (module docstring)."""
    k = len(fractions)
    points = [(t, simulate(val, fractions, t)) for t in candidate_thresholds(val, fractions)]
    front = [(t, pt) for t, pt in pareto_front(points) if pt.compute < 1.0 - 1e-9]
    rows: list[FrontRow] = []
    for i in spread(front, max(n_points - 1, 1)):
        t, pt = front[i]
        budget = min(math.ceil(pt.compute * 1000 - 1e-6) / 1000, 1.0)
        if rows and budget <= rows[-1].budget:
            continue
        rows.append(FrontRow(budget, pt, simulate(test, fractions, t)))
    full = torch.full((k,), NEVER_EXIT)  # every exit off: all run to the last one
    if rows and rows[-1].budget >= 1.0:
        rows.pop()
    rows.append(FrontRow(1.0, simulate(val, fractions, full), simulate(test, fractions, full)))
    return rows


def largest_drop(rows: list[FrontRow]) -> float:
    """The largest fall of *test* accuracy from one row to the next larger budget (0 if none)."""
    return max([0.0] + [a.test.accuracy - b.test.accuracy for a, b in itertools.pairwise(rows)])
