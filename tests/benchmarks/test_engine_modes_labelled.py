"""The engine benchmark measures accuracy on the package's own held test part when it can."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.engine_modes import main as engine_modes
from benchmarks.harness.data import held_test_images
from models.package import load_package
from tests.training.helpers import tiny_config, write_config
from training.cli import main as training
from training.config import validate_config
from training.data import load_dataset


def test_accuracy_is_measured_on_the_packages_test_split(tmp_path: Path) -> None:
    run, pkg_dir = tmp_path / "run", tmp_path / "pkg"
    config = write_config(tmp_path / "c.yaml", tiny_config(run))
    assert training(["train", "--config", str(config)]) == 0
    assert training(["calibrate", "--run-dir", str(run), "--budgets", "0.6,1.0"]) == 0
    assert training(["export", "--run-dir", str(run), "--out", str(pkg_dir), "--name", "t"]) == 0
    pkg = load_package(pkg_dir)

    labelled = held_test_images(pkg.manifest)
    assert pkg.manifest.provenance.training_config is not None
    want = load_dataset(validate_config(pkg.manifest.provenance.training_config).data).test
    assert labelled is not None and labelled.labels == want.y.tolist()

    out = tmp_path / "out"
    engine_modes(["--package", str(pkg_dir), "--seconds", "0.3", "--repeat", "1", "--clients", "2",
                  "--out", str(out)])  # fmt: skip
    data = json.loads((out / "engine_modes.json").read_text())
    assert "64 labelled images" in data["meta"]["images"]
    for row in data["modes"] + data["controller"]:
        assert 0.0 <= row["accuracy"] <= 1.0
    md = (out / "engine_modes.md").read_text()
    assert "| accuracy |" in md and "n/a" not in md


def test_untrained_package_falls_back_to_synthetic_images(package_dir: Path) -> None:
    pkg = load_package(package_dir)
    assert pkg.manifest.provenance.training_config is None
    assert held_test_images(pkg.manifest) is None


def test_a_precision_the_package_lacks_is_one_line_not_a_traceback(package_dir: Path) -> None:
    from benchmarks.engine_speed import main as engine_speed

    with pytest.raises(SystemExit, match=r"^error: .*the package has no int8 graphs$"):
        engine_speed(["--package", str(package_dir), "--backend", "stub", "--precisions", "int8",
                      "--seconds", "0.1"])  # fmt: skip
