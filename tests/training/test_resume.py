"""Checkpoint/resume exactness, the NaN guard, and the refusal to overwrite a run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import training.stages as stages
from training.checkpoint import load_checkpoint
from training.cli import main
from training.config import ConfigError, validate_config
from training.trainer import run_training

from .helpers import TINY_MODEL, tiny_config, write_config


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = load_checkpoint(run / "last.pt")["model"]
    return state


@pytest.mark.parametrize("recipe", ["joint", "two-stage"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, recipe: str) -> None:
    extra = {"recipe": recipe, "ge": True, "kd": True, "model": {**TINY_MODEL, "isc": True}}
    extra.update({"epochs": 2, "stage2_epochs": 1} if recipe == "two-stage" else {"epochs": 3})
    whole = validate_config(tiny_config(tmp_path / "whole", **extra))
    assert run_training(whole)["complete"]
    part = validate_config(tiny_config(tmp_path / "part", stop_after=1, **extra))
    assert not run_training(part)["complete"]
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    rest = validate_config(tiny_config(tmp_path / "part", **extra))
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        run_training(rest)
    assert run_training(rest, resume=True)["complete"]
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_may_switch_to_fp16(tmp_path: Path) -> None:
    # amp is a run-time knob (a run started on the CPU may go on on a GPU); the checkpoint of a
    # run without fp16 holds a disabled scaler's empty state, which an enabled one cannot load.
    assert not run_training(validate_config(tiny_config(tmp_path, epochs=2, stop_after=1)))["complete"]
    fp16 = validate_config(tiny_config(tmp_path, epochs=2, amp="fp16"))
    assert run_training(fp16, resume=True)["complete"]
    assert load_checkpoint(tmp_path / "last.pt")["scaler"]  # a live fp16 scaler's state


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    assert run_training(validate_config(tiny_config(tmp_path, epochs=2, stop_after=1))) is not None
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        run_training(validate_config(tiny_config(tmp_path, epochs=2, optim={"lr": 0.5})), resume=True)


def test_a_key_the_recipe_never_reads_does_not_block_a_resume(tmp_path: Path) -> None:
    # stage2_epochs belongs to the two-stage recipe; a joint run resumes whatever it says
    assert not run_training(validate_config(tiny_config(tmp_path, epochs=2, stop_after=1)))["complete"]
    assert run_training(validate_config(tiny_config(tmp_path, epochs=2, stage2_epochs=7)), resume=True)[
        "complete"
    ]


def test_resume_may_find_the_starting_weights_elsewhere(tmp_path: Path) -> None:
    # init_from is only read at the start: a run moved to another machine and back resumes.
    assert run_training(validate_config(tiny_config(tmp_path / "first", epochs=1)))["complete"]
    moved = tmp_path / "moved.pt"
    moved.write_bytes((tmp_path / "first" / "last.pt").read_bytes())
    start = {"epochs": 2, "init_from": str(tmp_path / "first" / "last.pt")}
    run = tmp_path / "second"
    assert not run_training(validate_config(tiny_config(run, stop_after=1, **start)))["complete"]
    (tmp_path / "first" / "last.pt").unlink()
    resumed = validate_config(tiny_config(run, **{**start, "init_from": str(moved)}))
    assert run_training(resumed, resume=True)["complete"]
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_nan_guard_stops_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    path = write_config(tmp_path / "c.yaml", tiny_config(run, epochs=3, stop_after=1))
    assert main(["train", "--config", str(path)]) == 0
    digest = hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()
    path = write_config(tmp_path / "c.yaml", tiny_config(run, epochs=3))
    calls = []

    def nan_loss(logits: list[torch.Tensor], target: torch.Tensor, smoothing: float) -> torch.Tensor:
        calls.append(1)
        return sum(z.sum() for z in logits) * float("nan")  # type: ignore[return-value]

    monkeypatch.setattr(stages, "multi_exit_ce", nan_loss)
    assert main(["train", "--config", str(path), "--resume", "--set", "max_bad_steps=3"]) == 4
    err = capsys.readouterr().err
    assert "NaN/Inf for 3 steps in a row" in err and "Traceback" not in err
    assert len(calls) == 3
    assert hashlib.sha256((run / "last.pt").read_bytes()).hexdigest() == digest


def test_init_from_starts_from_the_checkpoints_weights_on_the_same_split(tmp_path: Path) -> None:
    assert run_training(validate_config(tiny_config(tmp_path / "a")))["complete"]
    start = str(tmp_path / "a" / "last.pt")
    # A learning rate of ~0 keeps the weights where they started: the checkpoint's.
    still = {"optim": {"lr": 1e-12, "weight_decay": 0.0, "warmup_epochs": 0}}
    run_training(validate_config(tiny_config(tmp_path / "b", init_from=start, **still)))
    run_training(validate_config(tiny_config(tmp_path / "c", **still)))
    a, b, c = (_weights(tmp_path / r) for r in "abc")
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    for k in params:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    assert any(not torch.allclose(c[k], a[k]) for k in params)  # a fresh start is elsewhere
    other_split = tiny_config(tmp_path / "d", init_from=start, data={"split_seed": 1})
    with pytest.raises(ConfigError, match=r"another split \(data\.split_seed: 0 there, 1 here\)"):
        run_training(validate_config(other_split))
    other_model = tiny_config(tmp_path / "e", init_from=start, model={**TINY_MODEL, "isc": True})
    with pytest.raises(ConfigError, match="holds another model"):
        run_training(validate_config(other_model))
    stopped = tiny_config(tmp_path / "p", epochs=2, stop_after=1)
    assert not run_training(validate_config(stopped))["complete"]
    partial = tiny_config(tmp_path / "f", init_from=str(tmp_path / "p" / "last.pt"))
    with pytest.raises(ConfigError, match=r"unfinished run \(stopped after joint epoch 1\)"):
        run_training(validate_config(partial))


def test_a_warm_restarted_package_records_the_run_it_started_from(tmp_path: Path) -> None:
    from models.package import load_package

    assert run_training(validate_config(tiny_config(tmp_path / "a", epochs=2)))["complete"]
    first = str(tmp_path / "a" / "last.pt")
    assert run_training(validate_config(tiny_config(tmp_path / "b", init_from=first)))["complete"]
    second = str(tmp_path / "b" / "last.pt")
    assert run_training(validate_config(tiny_config(tmp_path / "c", init_from=second)))["complete"]
    assert main(["calibrate", "--run-dir", str(tmp_path / "c"), "--budgets", "0.7,1.0"]) == 0
    pkg = tmp_path / "pkg"
    assert main(["export", "--run-dir", str(tmp_path / "c"), "--out", str(pkg), "--name", "w"]) == 0
    provenance = load_package(pkg).manifest.provenance.model_dump()
    record = provenance["warm_start"]  # the phase it started from, then the one before that
    assert record["checkpoint"] == second and record["epochs"] == 1
    assert record["warm_start"]["checkpoint"] == first and record["warm_start"]["epochs"] == 2
    assert record["warm_start"]["training_config"]["init_from"] is None
    assert record["warm_start"]["warm_start"] is None
    assert provenance["metrics"]["total_epochs"] == 1 + 1 + 2
    assert (
        provenance["metrics"]["total_train_wall_seconds"] > provenance["metrics"]["train_wall_seconds"]
    )
    for name, run in (("warm_start_log.jsonl", "b"), ("warm_start_log_2.jsonl", "a")):
        assert (pkg / name).read_text() == (tmp_path / run / "log.jsonl").read_text()


def test_channels_last_training_checkpoints_plain_weights(tmp_path: Path) -> None:
    """NHWC training (the CUDA default) leaves a checkpoint that rebuilds the same network."""
    from training.checkpoint import rebuild_model

    cfg = validate_config(tiny_config(tmp_path, channels_last="on"))
    live = run_training(cfg)["model"].eval()
    conv = next(m for m in live.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    rebuilt = rebuild_model(load_checkpoint(tmp_path / "last.pt"))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(live(x), rebuilt(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_checkpoint_older_than_the_newest_keys_resumes(tmp_path: Path) -> None:
    # The shipped default's runs were saved before lr_scaled, kd_form and stage2_bn existed.
    run = tmp_path / "run"
    run_training(validate_config(tiny_config(run, epochs=2, stop_after=1)))
    blob = load_checkpoint(run / "last.pt")
    for key in ("lr_scaled", "kd_form", "stage2_bn"):
        del blob["config"][key]
    torch.save(blob, run / "last.pt")
    assert run_training(validate_config(tiny_config(run, epochs=2)), resume=True)["complete"]
