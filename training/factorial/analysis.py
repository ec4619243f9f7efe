"""The pre-registered analysis of docs/imta.md: comparisons, their tests, and the verdict rule.

The primary contrast is IMTA (``ge+isc_kd``) against ``plain``; the others are secondary and
descriptive (each with the same tests, no correction across comparisons). Seeds pair by index:
a comparison uses the seeds finished in both of its arms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.factorial.collect import RunScores
from training.factorial.stats import Interval, holm, mcnemar_per_exit, paired_bootstrap

# The rows of configs/imta/factorial.yaml, in its order (the results files' arm names).
ARM_NAMES = ("plain", "ge", "lr_scaled", "ge+isc_kd", "plain+isc_kd")
PRIMARY = ("ge+isc_kd", "plain")  # IMTA against plain multi-exit training: the verdict's contrast
ALPHA = 0.05
MIN_SEEDS = 2  # a verdict on fewer seeds is partial, whatever was planned
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed before any run: the intervals are reproducible to the digit
COMPARISONS = (
    (*PRIMARY, "primary: IMTA against plain multi-exit training"),
    ("ge", "plain", "GE alone (stage 1)"),
    ("lr_scaled", "plain", "per-block learning rate alone (stage 1)"),
    ("ge", "lr_scaled", "GE beyond its per-block learning-rate effect"),
    ("plain+isc_kd", "plain", "stage 2 (ISC + KD heads) on the plain network"),
    ("ge+isc_kd", "ge", "stage 2 (ISC + KD heads) on the GE network"),
    ("ge+isc_kd", "plain+isc_kd", "GE, given stage 2"),
)


def by_arm(scores: list[RunScores]) -> dict[str, dict[int, RunScores]]:
    out: dict[str, dict[int, RunScores]] = {}
    for s in scores:
        out.setdefault(s.arm, {})[s.seed] = s
    return out


def compare(
    runs: dict[str, dict[int, RunScores]], a: str, b: str, *, resamples: int = RESAMPLES
) -> dict[str, Any] | None:
    """A against B on their common seeds: per exit and for the mean over exits, the pooled and
    per-seed differences (fractions), McNemar (pooled and per seed, Holm over exits) and the
    paired bootstrap interval. None when no seed is finished in both arms."""
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    if not seeds:
        return None
    right_a = np.stack([runs[a][s].right for s in seeds])  # [S, K, N]
    right_b = np.stack([runs[b][s].right for s in seeds])
    pooled = mcnemar_per_exit(right_a, right_b)
    adjusted = holm([m.p_value for m in pooled])
    intervals = paired_bootstrap(right_a, right_b, resamples=resamples, seed=BOOTSTRAP_SEED)
    per_seed = []
    for i, s in enumerate(seeds):
        tests = mcnemar_per_exit(right_a[i : i + 1], right_b[i : i + 1])
        diff = right_a[i].mean(axis=1) - right_b[i].mean(axis=1)
        per_seed.append(
            {
                "seed": s,
                "difference": diff.tolist(),
                "mean_difference": float(diff.mean()),
                "mcnemar_p": [t.p_value for t in tests],
                "mcnemar_p_holm": holm([t.p_value for t in tests]),
            }
        )
    return {
        "a": a,
        "b": b,
        "seeds": seeds,
        "exits": [
            {
                "only_a": m.only_a,
                "only_b": m.only_b,
                "mcnemar_p": m.p_value,
                "mcnemar_p_holm": p,
                **_interval(iv),
            }
            for m, iv, p in zip(pooled, intervals[:-1], adjusted, strict=True)
        ],
        "mean_over_exits": _interval(intervals[-1]),
        "per_seed": per_seed,
    }


def _interval(iv: Interval) -> dict[str, float]:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "bootstrap_p": iv.p_value}


def verdict(
    primary: dict[str, Any] | None, planned_seeds: list[int], alpha: float = ALPHA
) -> dict[str, Any]:
    """The outcome of docs/imta.md's decision rule for IMTA - plain (``primary`` from
    :func:`compare`): ``gain at every exit``, ``gain on average, not at every exit``, ``loss``,
    ``no detectable difference``; ``partial`` when fewer than the planned seeds are in it."""
    if primary is None:
        primary = {"seeds": [], "exits": [], "mean_over_exits": None}
    mean = primary["mean_over_exits"]
    exits = primary["exits"]
    worse = [i for i, e in enumerate(exits) if e["estimate"] < 0]
    sig_worse = [i for i, e in enumerate(exits) if e["estimate"] < 0 and e["mcnemar_p_holm"] < alpha]
    sig_better = [i for i, e in enumerate(exits) if e["estimate"] > 0 and e["mcnemar_p_holm"] < alpha]
    if mean is None:
        outcome = "no result"
    elif mean["low"] > 0 and not worse:
        outcome = "gain at every exit"
    elif mean["low"] > 0:
        outcome = "gain on average, not at every exit"
    elif mean["high"] < 0:
        outcome = "loss"
    else:
        outcome = "no detectable difference"
    seeds = primary["seeds"]
    partial = len(seeds) < max(len(planned_seeds), MIN_SEEDS)
    return {
        "outcome": outcome,
        "partial": partial,
        "seeds": seeds,
        "planned_seeds": planned_seeds,
        "exits_below_zero": worse,
        "exits_significantly_worse": sig_worse,
        "exits_significantly_better": sig_better,
        "paper_target_met": outcome == "gain at every exit",
    }
