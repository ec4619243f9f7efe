"""Stochastic weight averaging: the final model is the mean of the averaged epochs' weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.cli import main
from training.config import ConfigError, validate_config
from training.trainer import run_training

from .helpers import tiny_config, write_config

SWA_RUN: dict[str, Any] = {
    "epochs": 2,
    "optim": {"lr": 0.05, "warmup_epochs": 0, "schedule": "constant"},
}


def _run(run_dir: Path, **extra: Any) -> dict[str, Any]:
    run_training(validate_config(tiny_config(run_dir, **{**SWA_RUN, **extra})), resume=True)
    return load_checkpoint(run_dir / "last.pt")


def test_swa_model_is_the_mean_of_the_epochs_with_recomputed_batchnorm(tmp_path: Path) -> None:
    plain_epoch1 = _run(tmp_path / "plain", stop_after=1)["model"]
    plain = _run(tmp_path / "plain")  # resumed: epoch 2
    swa = _run(tmp_path / "swa", swa_start=1)
    # Averaging only watches: the trajectory is the plain run's.
    for k, v in plain["model"].items():
        assert torch.equal(swa["last_iterate"][k], v), k
    bn_stats = [k for k in plain["model"] if k.endswith(("running_mean", "running_var"))]
    assert bn_stats
    for k, v in swa["model"].items():
        if k in bn_stats:  # re-estimated for the averaged weights, not copied from an iterate
            assert not torch.allclose(v, plain["model"][k]), k
        elif v.is_floating_point():
            torch.testing.assert_close(v, (plain_epoch1[k] + plain["model"][k]) / 2, msg=k)
    last = swa["history"][-1]
    assert last["swa_averaged"] == 2 and last["swa_bn_s"] > 0
    assert len(last["iterate_val_exit_acc"]) == len(last["val_exit_acc"]) == 3


def test_swa_run_resumes_exactly(tmp_path: Path) -> None:
    whole = _run(tmp_path / "whole", swa_start=1)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "part", **SWA_RUN))
    assert main(["train", "--config", str(config), "--swa-start", "1", "--stop-after", "1"]) == 0
    assert main(["train", "--config", str(config), "--swa-start", "1", "--resume"]) == 0
    part = load_checkpoint(tmp_path / "part" / "last.pt")
    for key in ("model", "last_iterate"):
        for k, v in whole[key].items():
            assert torch.equal(part[key][k], v), (key, k)


def test_finished_swa_run_extended_with_more_epochs_is_the_longer_run(tmp_path: Path) -> None:
    whole = _run(tmp_path / "whole", swa_start=1, epochs=3)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "part", **SWA_RUN))
    assert main(["train", "--config", str(config), "--swa-start", "1"]) == 0  # 2 epochs, finished
    assert main(["train", "--config", str(config), "--swa-start", "1", "--resume", "--epochs", "3"]) == 0
    part = load_checkpoint(tmp_path / "part" / "last.pt")
    assert part["history"][-1]["swa_averaged"] == 3
    for key in ("model", "last_iterate"):
        for k, v in whole[key].items():
            assert torch.equal(part[key][k], v), (key, k)


def test_more_epochs_on_resume_is_refused_when_the_schedule_depends_on_them(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", epochs=1))  # cosine
    assert main(["train", "--config", str(config)]) == 0
    with pytest.raises(ConfigError, match="epochs: 1 -> 2"):
        run_training(validate_config(tiny_config(tmp_path / "run", epochs=2)), resume=True)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"swa_start": 3}, "after the last epoch"),
        ({"swa_start": 1, "recipe": "two-stage", "kd": True}, "needs recipe 'joint'"),
    ],
)
def test_swa_config_errors_name_the_problem(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(tmp_path, **SWA_RUN, **extra))
