"""Write a model package (manifest, safetensors, per-stage ONNX) from a checkpoint + calibration.

The manifest is built with ``models.package.new_manifest`` (exits and FLOPs measured from the
model itself), the budget table comes from ``calibration.json``, and the provenance records the
training config, the data split (seed, sizes, a hash of the test indices), the measured metrics
and the git commit. The run's config, training log, calibration and plots are copied next to the
package files for people (``load_package`` ignores them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from models.package import BudgetEntry, Preprocessing, Provenance, new_manifest, save_package
from training.checkpoint import rebuild_model

EXTRA_FILES = ("log.jsonl", "calibration.json", "calibration.png", "training.png", "evaluation.json")


def package_budgets(calibration: dict[str, Any]) -> list[BudgetEntry]:
    """Budget table rows: the points of the validation front (``calibration["front"]``,
    training/front.py) or, in an older calibration.json, per budget the method with the higher
    *validation* accuracy.

    Choosing on validation keeps the test split untouched; the row's compute, exit fractions and
    accuracy are those measured on the test split.
    """
    if "front" in calibration:
        return [
            BudgetEntry(
                budget=row["budget"],
                thresholds=row["val"]["thresholds"],
                expected_compute_fraction=min(max(row["test"]["compute"], 0.0), 1.0),
                exit_fractions=row["test"]["exit_fractions"],
                accuracy=row["test"]["accuracy"],
            )
            for row in calibration["front"]
        ]
    out = []
    for row in calibration["budgets"]:
        opt, geo = row["optimised_val"], row["geometric_val"]
        method = "optimised" if opt["accuracy"] >= geo["accuracy"] else "geometric"
        test = row[f"{method}_test"]
        out.append(
            BudgetEntry(
                budget=row["budget"],
                thresholds=row[f"{method}_val"]["thresholds"],
                expected_compute_fraction=min(max(test["compute"], 0.0), 1.0),
                exit_fractions=test["exit_fractions"],
                accuracy=test["accuracy"],
            )
        )
    return out


def wall_seconds(history: list[dict[str, Any]]) -> float:
    """Training time of a run: the sum of its epochs' times."""
    return sum(r.get("epoch_s", 0.0) for r in history)


MAX_PHASES = 16  # guards against a checkpoint chain that loops back on itself


def warm_start_record(cfg: dict[str, Any], depth: int = 1) -> dict[str, Any] | None:
    """What a warm-restarted run (``init_from``) started from: the earlier run's config, epochs and
    time, read from its checkpoint when it is still on disk, and, nested under ``warm_start``, what
    that run started from in turn, so the package tells the whole story of a multi-phase model."""
    source = cfg.get("init_from")
    if not source:
        return None
    record: dict[str, Any] = {"checkpoint": source}
    path = Path(source).expanduser()
    if path.is_file():
        from training.checkpoint import load_checkpoint

        earlier = load_checkpoint(path)
        history = earlier.get("history", [])
        earlier_cfg = earlier.get("config") or {}
        record |= {
            "training_config": earlier.get("config"),
            "epochs": len(history),
            "train_wall_seconds": wall_seconds(history),
            "val_exit_accuracy": history[-1].get("val_exit_acc") if history else None,
        }
        if depth < MAX_PHASES:
            record["warm_start"] = warm_start_record(earlier_cfg, depth + 1)
    return record


def earlier_phases(warm_start: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The chain of :func:`warm_start_record`, newest first."""
    chain = []
    while warm_start is not None:
        chain.append(warm_start)
        warm_start = warm_start.get("warm_start")
    return chain


def git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def export_package(
    checkpoint: dict[str, Any],
    calibration: dict[str, Any],
    out: Path,
    *,
    name: str,
    run_dir: Path | None = None,
    target_default: float = 0.5,
    export_onnx: bool = True,
) -> Path:
    """Write the package directory (or ``.tar``) ``out``; returns its path."""
    model = rebuild_model(checkpoint)
    cfg = checkpoint["config"]
    data = cfg["data"]
    preprocessing = Preprocessing(
        input_size=tuple(data["input_size"]),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        resize=None if data["source"] != "imagefolder" else int(min(data["input_size"])),
    )
    budgets = package_budgets(calibration)
    # The row a request for the target budget gets: the largest not above it (else the cheapest).
    within = [b.budget for b in budgets if b.budget <= target_default + 1e-9]
    default = max(within) if within else min((b.budget for b in budgets), default=None)
    info = checkpoint.get("data_info", {})
    history = checkpoint.get("history", [])
    warm_start = warm_start_record(cfg)
    phases = earlier_phases(warm_start)
    provenance = Provenance(
        warm_start=warm_start,  # extra field: None unless the run started from another's weights
        training_config=cfg,
        dataset=f"{info.get('source')} ({info.get('location')})",
        split_seed=info.get("split_seed"),
        split=info,
        metrics={
            "test_exit_accuracy": calibration.get("test_exit_accuracy"),
            "val_exit_accuracy": calibration.get("val_exit_accuracy"),
            "epochs": len(history),
            "train_wall_seconds": wall_seconds(history),
            # every phase of a warm-restarted model, this one included
            "total_epochs": len(history) + sum(p.get("epochs", 0) for p in phases),
            "total_train_wall_seconds": wall_seconds(history)
            + sum(p.get("train_wall_seconds", 0.0) for p in phases),
        },
        code_version=git_commit(Path(__file__).resolve().parents[1]),
    )
    manifest = new_manifest(
        model,
        name=name,
        classes=list(checkpoint["classes"]),
        preprocessing=preprocessing,
        budgets=budgets,
        default_budget=default,
        provenance=provenance,
    )
    path = save_package(model, manifest, out, export_onnx=export_onnx, overwrite=True)
    if run_dir is not None and path.is_dir():
        (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        for extra in EXTRA_FILES:
            if (run_dir / extra).is_file():
                shutil.copy2(run_dir / extra, path / extra)
        # The earlier phases' epoch logs, next to this run's: warm_start_log.jsonl is the phase
        # this run started from, warm_start_log_2.jsonl the one before it, and so on.
        for k, phase in enumerate(phases, start=1):
            earlier_log = Path(phase["checkpoint"]).expanduser().parent / "log.jsonl"
            if earlier_log.is_file():
                name = "warm_start_log.jsonl" if k == 1 else f"warm_start_log_{k}.jsonl"
                shutil.copy2(earlier_log, path / name)
    return path


def load_calibration(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
