"""The frontier recipe end to end on a bring-your-own ImageFolder, through the CLI as a user runs
it: a WideNet teacher with airbench's switches, a multi-exit WideNet student taught by it (mirror
targets, TrivialAugment), calibration with the front table, export, and the package loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from models.package import load_package
from training.cli import main

from .helpers import write_config

GROUPS = [[8, 1, True], [16, 3, True]]


def _image_folder(root: Path, per_class: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for i, c in enumerate(("bird", "boat", "bus")):
        (root / c).mkdir(parents=True)
        for j in range(per_class):
            arr = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
            arr[..., i] += 150  # each class leans to one colour: learnable
            Image.fromarray(arr).save(root / c / f"{j}.jpg")
    return root


def _config(tmp_path: Path, run: str, data_dir: Path, **extra: object) -> Path:
    cfg = {
        "run_dir": str(tmp_path / run), "epochs": 2, "batch_size": 16, "threads": 1, "progress": False,
        "label_smoothing": 0.2, "lookahead": True,
        "data": {"source": "imagefolder", "path": str(data_dir), "cache_dir": str(tmp_path / "cache"),
                 "n_val": 12, "n_test": 12, "augment": "crop-flip", "crop_padding": 2,
                 "pad_mode": "reflect"},
        "optim": {"lr": 0.5, "momentum": 0.85, "weight_decay": 0.0015, "schedule": "linear",
                  "warmup_epochs": 0.5, "warmup_start": 0.2, "norm_bias_lr_scale": 8},
        **extra,
    }  # fmt: skip
    return write_config(tmp_path / f"{run}.yaml", cfg)


def test_teacher_then_student_then_package_on_an_image_folder(tmp_path: Path) -> None:
    data_dir = _image_folder(tmp_path / "pets")
    teacher = _config(tmp_path, "teacher", data_dir, eval_tta="flip-translate",
                      model={"name": "widenet", "kwargs": {"groups": GROUPS}})  # fmt: skip
    assert main(["train", "--config", str(teacher)]) == 0
    student = _config(
        tmp_path, "student", data_dir, kd=True, kd_teacher=str(tmp_path / "teacher" / "last.pt"),
        kd_teacher_tta="flip",
        model={"name": "widenet", "kwargs": {"groups": GROUPS, "exit_after": [0, 1]}},
    )  # fmt: skip
    student_dir = tmp_path / "student"
    assert main(["train", "--config", str(student), "--set", "data.policy=trivialaugment"]) == 0
    assert main(["calibrate", "--run-dir", str(student_dir), "--points", "4"]) == 0
    assert (
        main(["export", "--run-dir", str(student_dir), "--out", str(tmp_path / "pkg"), "--name", "pets"])
        == 0
    )
    pkg = load_package(tmp_path / "pkg")
    m = pkg.manifest
    assert m.classes == ["bird", "boat", "bus"] and m.num_exits == 2
    offered = [b.budget for b in m.budgets]
    assert offered == sorted(set(offered)) and offered[-1] == 1.0
    cfg = m.provenance.training_config
    assert cfg is not None and cfg["data"]["policy"] == "trivialaugment" and cfg["lookahead"] is True
