"""The results files: ``imta.json`` (the fixed schema) and ``imta_stats.json`` (everything else).

``imta.json`` is ``{"n_eval": int, "epochs": int, "arms": {arm: {seed: [acc_exit0, ...]}}}``:
per-exit test accuracy (fractions) of every finished run, arms named as in the plan.
``imta_stats.json`` holds the comparisons, the verdict, and the curves and norms the plots need,
so that ``report`` renders without touching the runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from training.factorial import analysis
from training.factorial.collect import RunScores

RESULTS, STATS = "imta.json", "imta_stats.json"


class ImtaResults(BaseModel):
    """The schema of ``imta.json``; unknown keys, unknown arms and non-fractions are errors."""

    model_config = ConfigDict(extra="forbid")

    n_eval: int = Field(ge=1)
    epochs: int = Field(ge=1)
    arms: dict[str, dict[str, list[float]]]

    @field_validator("arms")
    @classmethod
    def _known_arms_and_fractions(cls, arms: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        lengths = set()
        for arm, seeds in arms.items():
            if arm not in analysis.ARM_NAMES:
                raise ValueError(f"unknown arm {arm!r}; known: {list(analysis.ARM_NAMES)}")
            for seed, accs in seeds.items():
                if not seed.isdigit():
                    raise ValueError(f"{arm}: seed keys are integers as text, got {seed!r}")
                if not accs or not all(0.0 <= a <= 1.0 for a in accs):
                    raise ValueError(f"{arm}/{seed}: accuracies must be fractions in [0, 1]: {accs}")
                lengths.add(len(accs))
        if len(lengths) > 1:
            raise ValueError(f"every run must have the same number of exits, got {sorted(lengths)}")
        return arms


def results_file(scores: list[RunScores], epochs: int) -> ImtaResults:
    arms: dict[str, dict[str, list[float]]] = {}
    for name in analysis.ARM_NAMES:
        for s in sorted((s for s in scores if s.arm == name), key=lambda s: s.seed):
            arms.setdefault(name, {})[str(s.seed)] = [float(v) for v in s.right.mean(axis=1)]
    return ImtaResults(n_eval=int(scores[0].right.shape[1]), epochs=epochs, arms=arms)


def stats_file(
    scores: list[RunScores], book: dict[str, Any], *, resamples: int = analysis.RESAMPLES
) -> dict[str, Any]:
    """The comparisons, the verdict and the per-run curves (JSON-ready)."""
    runs = analysis.by_arm(scores)
    comparisons = []
    for a, b, role in analysis.COMPARISONS:
        found = analysis.compare(runs, a, b, resamples=resamples)
        if found is not None:
            comparisons.append({**found, "role": role})
    primary = next((c for c in comparisons if (c["a"], c["b"]) == analysis.PRIMARY), None)
    return {
        **book,
        "alpha": analysis.ALPHA,
        "resamples": resamples,
        "n_eval": int(scores[0].right.shape[1]),
        "verdict": analysis.verdict(primary, book["seeds"]),
        "comparisons": comparisons,
        "runs": [
            {
                "arm": s.arm,
                "seed": s.seed,
                "epochs_logged": s.epochs,
                "test_accuracy": [float(v) for v in s.right.mean(axis=1)],
                "val_accuracy": s.val_accuracy,
                "madds": s.madds,
                "budgets": s.budgets,
                "geometric_curve": s.geometric_curve,
                "norms": s.norms,
            }
            for s in scores
        ],
    }


def write_results(
    scores: list[RunScores], book: dict[str, Any], out: Path, *, resamples: int = analysis.RESAMPLES
) -> None:
    """Write ``imta.json`` and ``imta_stats.json`` into ``out``."""
    write_json(out / RESULTS, results_file(scores, book["epochs"]).model_dump())
    write_json(out / STATS, stats_file(scores, book, resamples=resamples))


def write_json(path: Path, data: Any) -> Path:
    """``data`` as one line of JSON, as every results file of ``benchmarks/results`` (read by the
    report, not by people)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def load_results(path: Path) -> ImtaResults:
    return ImtaResults.model_validate_json(path.read_text())
