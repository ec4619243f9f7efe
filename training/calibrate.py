"""Exit thresholds for compute budgets, fitted on validation logits and scored on test logits (pure).

Budgeted batch classification (MSDNet section 5, "dynamic evaluation"): a sample leaves at the
first exit whose max-softmax confidence reaches that exit's threshold; the last exit takes the
rest (``models.exit_policy.first_exit`` is the one rule, shared with the service). Two ways to
pick thresholds, both fitted on the validation split only:

(a) ``geometric``: MSDNet's scheme. For a parameter ``p`` the fraction of samples meant to leave
    at exit k is proportional to ``p^(k+1)``; each threshold is the confidence quantile that
    lets that many of the still-remaining validation samples leave. Sweeping ``p`` traces the
    accuracy-compute curve; for a budget we take the most accurate ``p`` within it.
(b) ``optimised``: our own. Coordinate ascent over each exit's threshold (candidates: confidence
    quantiles of that exit, or "never exit"), starting from the best geometric point, maximising
    validation accuracy subject to mean compute <= budget. It searches a superset of (a).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from models.exit_policy import NEVER_EXIT, confidences, first_exit

DEFAULT_BUDGETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_PS = tuple(float(p) for p in torch.linspace(0.05, 4.0, 80).tolist())


@dataclass(frozen=True)
class ExitScores:
    """Per-exit confidences ``conf [K, N]`` and correctness ``correct [K, N]`` (bool) of a split."""

    conf: Tensor
    correct: Tensor

    @classmethod
    def from_logits(cls, logits: Tensor, labels: Tensor) -> ExitScores:
        """``logits [K, N, C]``, ``labels [N]``."""
        conf, pred = confidences(logits)
        return cls(conf=conf, correct=pred == labels.view(1, -1))


@dataclass(frozen=True)
class OperatingPoint:
    """Thresholds and what they achieve on one split (compute as a fraction of the full network)."""

    thresholds: list[float]
    compute: float
    accuracy: float
    exit_fractions: list[float]


def simulate(scores: ExitScores, fractions: Tensor, thresholds: Tensor) -> OperatingPoint:
    """Apply ``thresholds [K]`` to a split; ``fractions [K]`` = cumulative compute of each exit."""
    k, n = scores.conf.shape
    exit_idx = first_exit(scores.conf, thresholds)
    acc = scores.correct[exit_idx, torch.arange(n)].float().mean()
    counts = torch.bincount(exit_idx, minlength=k).double() / n
    return OperatingPoint(
        thresholds=[float(t) for t in thresholds],
        compute=float((counts * fractions.double()).sum()),
        accuracy=float(acc),
        exit_fractions=counts.tolist(),
    )


def geometric_thresholds(conf: Tensor, p: float) -> Tensor:
    """MSDNet's thresholds for parameter ``p`` from validation confidences ``conf [K, N]``."""
    k, n = conf.shape
    weights = torch.tensor([p ** (i + 1) for i in range(k)], dtype=torch.float64)
    target = torch.floor(n * weights / weights.sum()).long()
    thresholds = torch.full((k,), NEVER_EXIT)
    remaining = torch.ones(n, dtype=torch.bool)
    for i in range(k - 1):
        pool = conf[i][remaining].sort(descending=True).values
        count = int(target[i])
        if count > 0 and len(pool) > 0:
            # Where ties at earlier exits left fewer than ``count``, all that remain leave here;
            # MSDNet's official dynamic_eval_find_threshold keeps 1e8 there (none leave).
            # Ours keeps the exit shares nearer p^k.
            thresholds[i] = pool[min(count, len(pool)) - 1]
            remaining &= conf[i] < thresholds[i]
    thresholds[-1] = 0.0
    return thresholds


def geometric_sweep(
    scores: ExitScores, fractions: Tensor, ps: tuple[float, ...] = DEFAULT_PS
) -> list[tuple[float, Tensor, OperatingPoint]]:
    """``(p, thresholds, validation point)`` for every ``p``."""
    out = []
    for p in ps:
        t = geometric_thresholds(scores.conf, p)
        out.append((p, t, simulate(scores, fractions, t)))
    return out


def _best_within(points: list[tuple[Tensor, OperatingPoint]], budget: float) -> Tensor | None:
    feasible = [
        (pt.accuracy, -pt.compute, i) for i, (_, pt) in enumerate(points) if pt.compute <= budget
    ]
    return points[max(feasible)[2]][0] if feasible else None


def fit_geometric(scores: ExitScores, fractions: Tensor, budget: float) -> Tensor | None:
    """Most accurate geometric thresholds within ``budget`` on this split (None if none fits)."""
    return _best_within([(t, pt) for _, t, pt in geometric_sweep(scores, fractions)], budget)


def optimise_thresholds(
    scores: ExitScores,
    fractions: Tensor,
    budget: float,
    start: Tensor,
    *,
    num_candidates: int = 100,
    sweeps: int = 4,
) -> Tensor:
    """Coordinate ascent on validation accuracy s.t. mean compute <= ``budget`` (module docstring)."""
    k = scores.conf.shape[0]
    qs = torch.linspace(0, 1, num_candidates)
    candidates = [
        torch.cat([torch.quantile(scores.conf[i].float(), qs), torch.tensor([NEVER_EXIT])])
        for i in range(k - 1)
    ]
    best = start.clone().float()
    best_pt = simulate(scores, fractions, best)
    for _ in range(sweeps):
        improved = False
        for i in range(k - 1):
            for c in candidates[i]:
                trial = best.clone()
                trial[i] = c
                pt = simulate(scores, fractions, trial)
                better = pt.accuracy > best_pt.accuracy or (
                    pt.accuracy == best_pt.accuracy and pt.compute < best_pt.compute
                )
                if pt.compute <= budget and better:
                    best, best_pt, improved = trial, pt, True
        if not improved:
            break
    return best


@dataclass(frozen=True)
class BudgetRow:
    budget: float
    geometric_val: OperatingPoint
    geometric_test: OperatingPoint
    optimised_val: OperatingPoint
    optimised_test: OperatingPoint


def calibrate_budgets(
    val: ExitScores,
    test: ExitScores,
    fractions: Tensor,
    budgets: tuple[float, ...] = DEFAULT_BUDGETS,
) -> list[BudgetRow]:
    """Both methods for every feasible budget: fitted on ``val``, scored on ``test``.

    Budgets below the first exit's compute are infeasible and skipped. Budget 1.0 disables every
    exit (all thresholds ``NEVER_EXIT``): every sample runs to the last exit.
    """
    rows = []
    for b in budgets:
        if b < float(fractions[0]) - 1e-9:
            continue
        if b >= 1.0:
            geo = opt = torch.full((len(fractions),), NEVER_EXIT)
        else:
            found = fit_geometric(val, fractions, b)
            geo = found if found is not None else torch.zeros(len(fractions))
            opt = optimise_thresholds(val, fractions, b, geo)
        rows.append(
            BudgetRow(
                budget=b,
                geometric_val=simulate(val, fractions, geo),
                geometric_test=simulate(test, fractions, geo),
                optimised_val=simulate(val, fractions, opt),
                optimised_test=simulate(test, fractions, opt),
            )
        )
    return rows


def interpolate_accuracy(curve: list[OperatingPoint], compute: float) -> float:
    """Accuracy of a (compute-sorted) curve at ``compute``, linear between its points."""
    pts = sorted((p.compute, p.accuracy) for p in curve)
    if compute <= pts[0][0]:
        return pts[0][1]
    for (c0, a0), (c1, a1) in itertools.pairwise(pts):
        if c0 <= compute <= c1:
            return a0 if c1 == c0 else a0 + (a1 - a0) * (compute - c0) / (c1 - c0)
    return pts[-1][1]


def row_to_dict(row: BudgetRow) -> dict[str, object]:
    return asdict(row)
