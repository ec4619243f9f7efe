"""int8 stage graphs: export writes them, they agree with fp32, their budget table is their own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.exit_policy import first_exit
from models.package import load_package
from models.quantize import stage_logits
from training import quantize
from training.cli import main
from training.quantize import QuantizationError, check_parity, package_splits


def test_export_writes_int8_graphs_that_agree_with_fp32(int8_package: Path) -> None:
    pkg = load_package(int8_package)
    m = pkg.manifest
    assert m.int8 is not None
    assert [g.file for g in m.int8.onnx] == [f"onnx/int8/stage_{k}.onnx" for k in range(m.num_exits)]
    assert all(g.file in m.files for g in m.int8.onnx)  # checksummed like every other file
    assert [g.inputs for g in m.int8.onnx] == [g.inputs for g in m.onnx]
    q = m.int8.quantization
    assert (q.format, q.activations, q.weights, q.per_channel) == ("QDQ", "uint8", "int8", True)
    assert min(m.int8.fp32_agreement) >= quantize.MIN_AGREEMENT
    # int8 graphs are a quarter the size of the fp32 ones, give or take the fp32 islands
    size = {p: sum((pkg.root / g.file).stat().st_size for g in gs) for p, gs in
            (("fp32", m.onnx), ("int8", m.int8.onnx))}  # fmt: skip
    assert size["int8"] < 0.6 * size["fp32"]


def test_int8_budget_table_is_what_int8_graphs_do_on_the_test_split(int8_package: Path) -> None:
    """Each int8 row's accuracy and exit shares are those of its thresholds on int8 logits."""
    m = load_package(int8_package).manifest
    assert m.int8 is not None
    x, y = package_splits(m, None)["test"]
    paths = [int8_package / g.file for g in m.int8.onnx]
    logits = torch.from_numpy(stage_logits(paths, [g.inputs for g in m.onnx], x))
    conf, pred = torch.softmax(logits, -1).max(-1)
    assert [r.budget for r in m.int8.budgets] == m.budget_values
    for row in m.int8.budgets:
        exit_of = first_exit(conf, torch.tensor(row.thresholds))
        answer = pred[exit_of, torch.arange(len(y))].numpy()
        assert row.accuracy == pytest.approx(float((answer == y).mean()), abs=1e-6)
        shares = np.bincount(exit_of.numpy(), minlength=m.num_exits) / len(y)
        assert row.exit_fractions == pytest.approx(shares.tolist(), abs=1e-9)
    assert m.int8.exit_accuracy == pytest.approx((logits.argmax(-1).numpy() == y).mean(1).tolist())


def test_quantize_command_adds_int8_to_a_package_without(int8_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(int8_package, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shutil.rmtree(copy / "onnx" / "int8")
    for g in manifest.pop("int8")["onnx"]:
        del manifest["files"][g["file"]]
    (copy / "manifest.json").write_text(json.dumps(manifest))  # as exported before int8 existed
    assert load_package(copy).manifest.int8 is None
    assert main(["quantize", "--package", str(copy)]) == 0
    again, first = load_package(copy).manifest.int8, load_package(int8_package).manifest.int8
    assert again is not None and first is not None
    assert again.budgets == first.budgets  # calibration and quantization are deterministic


def test_failed_parity_leaves_the_package_as_it_was(
    int8_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(int8_package, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # no graph can agree that much
    with pytest.raises(QuantizationError, match=r"exit 2: agreement 100\.00 %"):
        quantize.quantize_package(copy)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_parity_check_names_every_failing_exit() -> None:
    fp32, int8 = np.array([0.90, 0.92, 0.95]), np.array([0.90, 0.915, 0.95])
    check_parity(fp32, int8, np.array([0.99, 0.98, 0.97]))  # within both tolerances
    with pytest.raises(QuantizationError) as e:
        check_parity(fp32, int8 - [0.0, 0.0, 0.02], np.array([0.99, 0.96, 0.99]))
    assert "exit 0" not in str(e.value)
    assert "exit 1: agreement 96.00 %" in str(e.value) and "exit 2: agreement 99.00 %" in str(e.value)
