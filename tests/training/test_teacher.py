"""Distillation from an external teacher (``kd_teacher``): the wiring, and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.package import load_package
from training.checkpoint import load_checkpoint, rebuild_model, save_atomic
from training.cli import main
from training.config import ConfigError, validate_config
from training.losses import ofa_kd_loss
from training.stages import StagePlan, build_stage
from training.trainer import run_training

from .helpers import TINY_MODEL, tiny_config, write_config

# A wider teacher than the student: any registered architecture may teach.
WIDE = {"name": "msdnet", "kwargs": {**TINY_MODEL["kwargs"], "n_channels": 12}}


def _train_teacher(run: Path, **extra: object) -> str:
    assert run_training(validate_config(tiny_config(run, model=WIDE, **extra)))["complete"]
    return str(run / "last.pt")


def test_the_teachers_last_exit_teaches_every_exit(tmp_path: Path) -> None:
    teacher_ckpt = _train_teacher(tmp_path / "teacher")
    cfg = validate_config(
        tiny_config(tmp_path / "student", kd=True, kd_weight=0.4, kd_temperature=2.0,
                    kd_teacher=teacher_ckpt)
    )  # fmt: skip
    plan = build_stage(cfg, "joint", 10, tmp_path / "student", torch.device("cpu"))
    teacher = rebuild_model(load_checkpoint(Path(teacher_ckpt)))
    z, y, loss = _loss_against(plan, teacher, 2.0, 0.4)
    # Not the self-taught OFA loss (the run's own last exit as teacher, plain CE at the last exit).
    assert not torch.allclose(loss, ofa_kd_loss(z, y, 2.0, 0.4))
    assert plan.frozen == []  # the whole student trains


def _loss_against(
    plan: StagePlan, teacher: torch.nn.Module, t: float, g: float
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The plan's loss on a random batch, checked to be OFA KD with ``teacher``'s last exit."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    z = plan.model(x)
    with torch.no_grad():
        target = teacher(x)[-1]
    loss = plan.criterion(z, y, x)
    torch.testing.assert_close(loss, ofa_kd_loss(z, y, t, g, teacher=target, teach_last=True))
    return z, y, loss


def test_train_with_kd_teacher_from_the_cli_leaves_the_teacher_untouched(tmp_path: Path) -> None:
    teacher_ckpt = _train_teacher(tmp_path / "teacher")
    before = load_checkpoint(Path(teacher_ckpt))["model"]
    path = write_config(tmp_path / "s.yaml", tiny_config(tmp_path / "student", kd=True))
    assert main(["train", "--config", str(path), "--kd-teacher", teacher_ckpt]) == 0
    blob = load_checkpoint(tmp_path / "student" / "last.pt")
    assert blob["complete"] and blob["config"]["kd_teacher"] == teacher_ckpt
    after = load_checkpoint(Path(teacher_ckpt))["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_teacher_from_another_split_or_without_kd_is_refused(tmp_path: Path) -> None:
    teacher_ckpt = _train_teacher(tmp_path / "teacher", data={"split_seed": 5})
    cfg = validate_config(tiny_config(tmp_path / "s", kd=True, kd_teacher=teacher_ckpt))
    with pytest.raises(ConfigError, match=r"kd_teacher .* another split \(data\.split_seed: 5 there, 0"):
        run_training(cfg)
    with pytest.raises(ConfigError, match="kd_teacher needs recipe 'joint' and kd: true"):
        validate_config(tiny_config(tmp_path / "s2", kd_teacher=teacher_ckpt))
    with pytest.raises(ConfigError, match="kd_teacher: an empty list"):
        validate_config(tiny_config(tmp_path / "s3", kd=True, kd_teacher=[]))


def test_a_teacher_of_another_class_count_is_refused(tmp_path: Path) -> None:
    # Same split keys, other classes: e.g. two ImageFolder trees of equal size. Relabel the
    # teacher's checkpoint to stand for one trained on a 4-class tree.
    teacher_ckpt = _train_teacher(tmp_path / "teacher")
    blob = load_checkpoint(Path(teacher_ckpt))
    save_atomic({**blob, "classes": blob["classes"][:4]}, Path(teacher_ckpt))
    cfg = validate_config(tiny_config(tmp_path / "s", kd=True, kd_teacher=teacher_ckpt))
    with pytest.raises(ConfigError, match="predicts 4 classes; this run's data has 10"):
        run_training(cfg)


def _export_teacher(tmp_path: Path, **extra: object) -> Path:
    run, pkg = tmp_path / "teacher", tmp_path / "teacher-pkg"
    _train_teacher(run, **extra)
    assert main(["calibrate", "--run-dir", str(run), "--budgets", "1.0"]) == 0
    assert main(["export", "--run-dir", str(run), "--out", str(pkg), "--name", "teacher"]) == 0
    return pkg


def test_an_exported_package_can_teach(tmp_path: Path) -> None:
    # The shipped model exists as a package, not as a run's checkpoint: it teaches all the same.
    pkg = _export_teacher(tmp_path)
    cfg = validate_config(tiny_config(tmp_path / "student", kd=True, kd_teacher=str(pkg)))
    plan = build_stage(cfg, "joint", 10, tmp_path / "student", torch.device("cpu"))
    _loss_against(plan, load_package(pkg).model, 3.0, 0.5)


def test_a_package_from_another_split_cannot_teach(tmp_path: Path) -> None:
    pkg = _export_teacher(tmp_path, data={"split_seed": 5})
    cfg = validate_config(tiny_config(tmp_path / "s", kd=True, kd_teacher=str(pkg)))
    with pytest.raises(ConfigError, match=r"kd_teacher .* another split \(data\.split_seed: 5 there, 0"):
        run_training(cfg)


def test_several_teachers_teach_their_averaged_logits(tmp_path: Path) -> None:
    first = _train_teacher(tmp_path / "t1")
    second = _train_teacher(tmp_path / "t2", seed=7)
    path = write_config(tmp_path / "s.yaml", tiny_config(tmp_path / "student", kd=True))
    assert main(["train", "--config", str(path), "--kd-teacher", first, second]) == 0
    cfg = validate_config(load_checkpoint(tmp_path / "student" / "last.pt")["config"])
    assert cfg.kd_teacher == [first, second]
    plan = build_stage(cfg, "joint", 10, tmp_path / "student", torch.device("cpu"))
    nets = [rebuild_model(load_checkpoint(Path(p))).eval() for p in (first, second)]
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(nets[0](x)[-1], nets[1](x)[-1])  # two seeds: two different teachers

    class Averaged(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [(nets[0](x)[-1] + nets[1](x)[-1]) / 2]

    _loss_against(plan, Averaged(), 3.0, 0.5)
