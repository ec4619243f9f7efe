"""Per-run figures of the finished runs: test correctness per exit and image, FLOPs, budgeted curves.

The runs are those of the factorial's plan (``configs/imta/factorial.yaml``, trained by
``python -m training ablation run``); a run is finished when its checkpoint says complete. Every
finished run is scored from its last checkpoint (``RUN/last.pt``, the last epoch: no model
selection) by the training CLI's ``calibrate``, which writes ``logits.pt`` (every exit's logits on
the validation and test images), ``evaluation.json`` (cumulative FLOPs per exit) and
``calibration.json`` (thresholds fitted on the validation images only, scored on the test
images; MSDNet's geometric sweep and the optimised thresholds, ``training/calibrate.py``).
It runs again only when the checkpoint is newer than the calibration.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from training import ablation

BUDGETS = "0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0"
NORM_KEYS = ("block_grad_norm", "block_weight_norm")


class CollectError(RuntimeError):
    """A finished run cannot be scored; the message names the run and the reason."""


@dataclass(frozen=True)
class RunScores:
    """One finished run. ``right``: ``[K, N]`` bool, exit k classifies test image i correctly."""

    arm: str
    seed: int
    right: NDArray[np.bool_]
    labels_digest: str  # the test labels' identity: every run must be scored on the same images
    epochs: int
    madds: list[float]  # cumulative multiply-adds (millions) per exit
    val_accuracy: list[float]
    budgets: list[dict[str, Any]]  # per budget: optimised and geometric thresholds' test point
    geometric_curve: list[dict[str, float]]  # test points of MSDNet's p-sweep (compute, accuracy)
    norms: dict[str, list[list[float]]]  # NORM_KEYS -> per epoch, per block (when logged)


def is_finished(run: Path) -> bool:
    """The run has trained its last epoch (``RUN/last.pt`` says ``complete``)."""
    from training.checkpoint import LAST, load_checkpoint

    return (run / LAST).is_file() and bool(load_checkpoint(run / LAST).get("complete"))


def calibrate_run(run_dir: Path, repo: Path, threads: int | None, data_dir: str | None) -> None:
    """``python -m training calibrate`` on the run, unless its calibration is newer than last.pt."""
    cal, last = run_dir / "calibration.json", run_dir / "last.pt"
    if (
        cal.is_file()
        and (run_dir / "logits.pt").is_file()
        and cal.stat().st_mtime >= last.stat().st_mtime
    ):
        return
    argv = ["calibrate", "--run-dir", str(run_dir.resolve()), "--budgets", BUDGETS]
    argv += ["--threads", str(threads)] if threads else []
    argv += ["--data-dir", data_dir] if data_dir else []
    with open(run_dir / "evaluate.log", "a") as out:
        code = subprocess.run(
            [sys.executable, "-m", "training", *argv], cwd=repo, stdout=out, stderr=out
        )
    if code.returncode != 0:
        raise CollectError(f"calibrate failed on {run_dir} (exit {code.returncode}); see evaluate.log")


def score_run(arm: str, seed: int, run_dir: Path) -> RunScores:
    """Read a calibrated run's test logits, FLOPs, budgeted curves and logged norms."""
    logits = torch.load(run_dir / "logits.pt", map_location="cpu")
    test, labels = logits["test"], logits["test_y"]
    cal = json.loads((run_dir / "calibration.json").read_text())
    log = ablation.read_log(run_dir)
    norms = {k: [e[k] for e in log if k in e] for k in NORM_KEYS}
    return RunScores(
        arm=arm,
        seed=seed,
        right=(test.argmax(-1) == labels.view(1, -1)).numpy(),
        labels_digest=hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16],
        epochs=len(log),
        madds=list(cal["exit_mult_adds_millions"]),
        val_accuracy=list(cal["val_exit_accuracy"]),
        budgets=[
            {
                "budget": r["budget"],
                "optimised": _point(r["optimised_test"]),
                "geometric": _point(r["geometric_test"]),
            }
            for r in cal["budgets"]
        ],
        geometric_curve=[
            {"compute": p["compute"], "accuracy": p["accuracy"]} for p in cal["geometric_curve_test"]
        ],
        norms={k: v for k, v in norms.items() if v},
    )


def _point(p: dict[str, Any]) -> dict[str, float]:
    return {"compute": p["compute"], "accuracy": p["accuracy"]}


def collect(
    plan: ablation.AblationPlan,
    *,
    seeds: tuple[int, ...] | None = None,
    repo: Path,
    threads: int | None = None,
    data_dir: str | None = None,
) -> tuple[list[RunScores], dict[str, Any]]:
    """Calibrate and score every finished run of the plan (of ``seeds`` only, when given).

    Returns the scores and the plan's bookkeeping: planned runs, finished ones, stage-1 epochs.

    Raises:
        CollectError: a run fails to calibrate, or two runs were scored on different test images.
    """
    planned = [
        (a, s) for a, s in ablation.plan_runs(plan) if s is not None and (seeds is None or s in seeds)
    ]
    scores = []
    for arm, seed in planned:
        run = ablation.run_dir(plan, arm, seed)
        if is_finished(run):
            print(f"scoring {arm}/seed{seed}", flush=True)
            calibrate_run(run, repo, threads, data_dir)
            scores.append(score_run(arm, seed, run))
    if len({s.labels_digest for s in scores}) > 1 or len({s.right.shape for s in scores}) > 1:
        raise CollectError("the finished runs were not scored on the same test images (split differs)")
    # A finished stage-1 run has logged every epoch it was set to train: the factorial's length.
    stage1 = [s.epochs for s in scores if plan.rows[s.arm].init_from is None]
    book = {
        "seeds": sorted({seed for _, seed in planned}),
        "planned": [f"{arm}/seed{seed}" for arm, seed in planned],
        "finished": [f"{s.arm}/seed{s.seed}" for s in scores],
        "epochs": max(stage1, default=0),
    }
    return scores, book
