"""``python -m training rebudget``: an existing package's table becomes points of its front."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from models.package import load_package
from models.quantize import stage_logits
from training.calibrate import ExitScores
from training.cli import main
from training.export import package_budgets
from training.front import front_table
from training.quantize import package_splits
from training.rebudget import default_row


def test_default_row_is_what_a_request_for_the_old_default_gets() -> None:
    rows = [0.316, 0.35, 0.386, 1.0]
    assert default_row(rows, 0.5) == 0.386
    assert default_row(rows, 0.35) == 0.35
    assert default_row(rows, 0.2) == 0.316  # every row above it: the cheapest
    assert default_row(rows, None) == 0.316


def test_rebudget_writes_the_front_of_the_packages_own_graphs(
    int8_package: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(int8_package, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    # a table of the full network alone
    manifest["budgets"] = [r for r in manifest["budgets"] if r["budget"] == 1.0]
    manifest["int8"]["budgets"] = [r for r in manifest["int8"]["budgets"] if r["budget"] == 1.0]
    manifest["default_budget"] = 1.0
    (copy / "manifest.json").write_text(json.dumps(manifest))

    assert main(["rebudget", "--package", str(copy), "--points", "5"]) == 0

    m = load_package(copy).manifest  # checksums (calibration.json changed) verified here
    splits = package_splits(m, None)
    scores = {
        s: ExitScores.from_logits(
            torch.from_numpy(
                stage_logits([copy / g.file for g in m.onnx], [g.inputs for g in m.onnx], x)
            ),
            torch.from_numpy(y),
        )
        for s, (x, y) in splits.items()
    }
    fractions = torch.tensor([e.compute_fraction for e in m.exits], dtype=torch.float64)
    front = [asdict(r) for r in front_table(scores["val"], scores["test"], fractions, 5)]
    assert m.budgets == package_budgets({"front": front})
    assert m.budget_values[-1] == 1.0 and len(set(m.budget_values)) == len(m.budgets)
    assert len(m.budgets) > 1 and m.default_budget == 1.0
    assert m.int8 is not None and [r.budget for r in m.int8.budgets] == m.budget_values
    saved = json.loads((copy / "calibration.json").read_text())["front"]
    assert [r["budget"] for r in saved] == m.budget_values
    # the weights and graphs are untouched
    for rel in [g.file for g in m.onnx] + ["weights.safetensors"]:
        assert (copy / rel).read_bytes() == (int8_package / rel).read_bytes()
    accuracies = [r.accuracy for r in m.budgets]
    assert all(np.isfinite(a) for a in accuracies if a is not None)


def test_rebudget_refuses_a_package_without_its_data(int8_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(int8_package, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["provenance"]["training_config"] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(Exception, match="records no training config"):
        main(["rebudget", "--package", str(copy)])
    assert (copy / "manifest.json").read_bytes() == before
