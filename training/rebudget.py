"""Refit a package's budget table from its own graphs: ``python -m training rebudget --package DIR``.

A package exported before its budget table became points of the validation accuracy-compute
front (``training/front.py``), or one that should offer another number of points, gets a new
table without retraining or re-exporting:

1. the package's fp32 stage graphs score its validation and test splits (ONNX Runtime, as the
   service runs them; the split is the one its provenance records);
2. :func:`training.front.front_table` picks the rows on validation and scores them on test;
3. the default budget becomes the row a request for the old default gets (the largest row not
   above it; the cheapest row when every row is above it);
4. with int8 graphs, their table is refitted at the new budgets on int8 logits, as ``quantize``
   fits it;
5. ``calibration.json`` (when the package has one) gains the front, and the manifest is rewritten
   atomically with the new checksums. Weights and graphs are not touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.onnx_export import StageGraph
from models.package import Manifest, governing_row, load_package, read_manifest
from models.quantize import stage_logits
from training.quantize import int8_budgets, package_splits, write_manifest

CALIBRATION = "calibration.json"


def add_rebudget_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rebudget",
        help="refit an existing package's budget table as points of its validation front",
        description="Score the package's validation and test splits with its own stage graphs, "
        "pick --points distinct points of the validation accuracy-compute front (cheapest exit to "
        "full network; training/front.py) and write them as the package's budget table (and its "
        "int8 table, refitted at the same budgets). Weights and graphs stay as they are. Needs "
        "the package's training data (its recorded config).",
    )
    p.add_argument("--package", type=Path, required=True, help="package directory (changed in place)")
    p.add_argument(
        "--points", type=int, default=8, help="rows in the table, full network included (default 8)"
    )
    p.add_argument("--data-dir", help="override data.path of the package's training config")
    p.set_defaults(handler=run_rebudget)


def run_rebudget(args: argparse.Namespace) -> int:
    before = read_manifest(args.package)
    after = rebudget_package(args.package, args.points, args.data_dir)
    print(f"{args.package}: {len(before.budgets)} budget rows -> {len(after.budgets)}")
    print("budget  test compute  test acc")
    for row in after.budgets:
        acc = 100 * (row.accuracy or 0)
        print(f"{row.budget:6.3f}  {row.expected_compute_fraction:12.3f}  {acc:7.2f}%")
    print(f"default budget {before.default_budget} -> {after.default_budget}")
    return 0


def default_row(budgets: list[float], old_default: float | None) -> float:
    """The row a request for ``old_default`` gets; the cheapest row if none fits (pure)."""
    row = governing_row(budgets, old_default if old_default is not None else min(budgets))
    return row if row is not None else min(budgets)


def rebudget_package(root: Path, points: int = 8, data_dir: str | None = None) -> Manifest:
    """Replace the budget table of the package ``root`` (module docstring).

    Returns:
        The new manifest (also written to ``root/manifest.json``).
    """
    from training.calibrate import ExitScores
    from training.export import package_budgets
    from training.front import front_table

    m = load_package(root).manifest
    splits = package_splits(m, data_dir)
    names = [g.inputs for g in m.onnx]

    def logits(graphs: list[StageGraph]) -> dict[str, np.ndarray]:
        """Every exit's logits ``[K, N, C]`` on each split through ``graphs``."""
        return {
            s: stage_logits([root / g.file for g in graphs], names, x) for s, (x, _) in splits.items()
        }

    fp32 = logits(m.onnx)
    scores = {
        s: ExitScores.from_logits(torch.from_numpy(fp32[s]), torch.from_numpy(y))
        for s, (_, y) in splits.items()
    }
    fractions = torch.tensor([e.compute_fraction for e in m.exits], dtype=torch.float64)
    front = [asdict(r) for r in front_table(scores["val"], scores["test"], fractions, points)]
    budgets = package_budgets({"front": front})
    new = m.model_copy(
        update={
            "budgets": budgets,
            "default_budget": default_row([b.budget for b in budgets], m.default_budget),
        }
    )
    if m.int8 is not None:
        int8 = logits(m.int8.onnx)
        table = int8_budgets(new, int8["val"], splits["val"][1], int8["test"], splits["test"][1])
        new = new.model_copy(update={"int8": m.int8.model_copy(update={"budgets": table})})
    files, calibration_text = dict(m.files), None
    if (root / CALIBRATION).is_file():
        calibration = json.loads((root / CALIBRATION).read_text())
        calibration["front"] = front
        calibration_text = json.dumps(calibration, indent=2) + "\n"
        if CALIBRATION in files:
            files[CALIBRATION] = hashlib.sha256(calibration_text.encode()).hexdigest()
    new = new.model_copy(update={"files": files})
    # Checked before anything lands: a refused manifest leaves the package as it was.
    Manifest.model_validate(new.model_dump())
    if calibration_text is not None:
        (root / CALIBRATION).write_text(calibration_text)
    write_manifest(root, new)
    return read_manifest(root)
