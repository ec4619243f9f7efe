"""The factorial's plan and launcher: order, skip, resume, failures, runs side by side.

A fake runner stands in for ``python -m training train``: it appends epoch records to the run's
``log.jsonl`` and writes a ``last.pt`` that says whether the run is complete, as training does.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from benchmarks.imta.launcher import (
    FINISHED,
    LOCK,
    LauncherError,
    LaunchSettings,
    expected_epochs,
    launch,
    read_log,
)
from benchmarks.imta.plan import ARM_NAMES, PlanError, plan

EPOCHS = 3


class FakeTraining:
    """Trains ``epochs_per_call`` epochs per call (all by default); ``fail_on`` exits 1."""

    def __init__(self, epochs_per_call: int = EPOCHS, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.epochs_per_call = epochs_per_call
        self.fail_on = fail_on

    def __call__(self, argv: list[str], log_file: Path) -> int:
        self.calls.append(argv)
        run_dir = Path(argv[argv.index("--run-dir") + 1])
        if self.fail_on and str(run_dir).endswith(self.fail_on):
            return 1
        done = len(read_log(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "log.jsonl", "a") as f:
            for e in range(done + 1, min(done + self.epochs_per_call, EPOCHS) + 1):
                f.write(json.dumps({"stage": "s", "epoch": e, "epoch_s": 10.0}) + "\n")
        complete = len(read_log(run_dir)) == EPOCHS
        torch.save({"complete": complete}, run_dir / "last.pt")
        log_file.write_text("trained\n")
        return 0


def _settings(root: Path, seeds: tuple[int, ...] = (0, 1)) -> LaunchSettings:
    return LaunchSettings(root, tuple(plan(seeds)), ("--epochs", "3"), epochs_of=lambda argv: EPOCHS)


def _run_dir(argv: list[str]) -> str:
    return argv[argv.index("--run-dir") + 1]


def test_plan_order_stage1_before_stage2_seed_by_seed() -> None:
    runs = plan((0, 1))
    assert [r.key for r in runs[:5]] == [
        "plain/seed0", "ge/seed0", "lr_scaled/seed0", "ge+isc_kd/seed0", "plain+isc_kd/seed0",
    ]  # fmt: skip
    assert [r.seed for r in runs] == [0] * 5 + [1] * 5
    assert {r.arm.name for r in runs} == set(ARM_NAMES)


def test_stage2_reads_its_own_seeds_stage1_checkpoint(tmp_path: Path) -> None:
    imta = next(r for r in plan((1,)) if r.arm.name == "ge+isc_kd")
    argv = imta.train_argv(tmp_path, ("--epochs", "1"))
    assert argv[argv.index("--init-from") + 1] == str(tmp_path / "ge" / "seed1" / "last.pt")
    assert argv[argv.index("--config") + 1] == "configs/imta/stage2_isc_kd.yaml"
    assert "seed=1" in argv and "--resume" in argv
    assert argv[-2:] == ["--epochs", "1"]  # overrides come last, so they win


def test_plan_rejects_unknown_arms_orphan_stage2_and_repeated_seeds() -> None:
    with pytest.raises(PlanError, match="unknown arm"):
        plan((0,), ("plain", "imta"))
    with pytest.raises(PlanError, match=r"\['ge'\]"):
        plan((0,), ("plain", "ge+isc_kd"))
    with pytest.raises(PlanError, match="distinct"):
        plan((0, 0))


def test_expected_epochs_come_from_the_training_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 7\nstage2_epochs: 2\nrecipe: joint\n")
    assert expected_epochs(["train", "--config", str(config)], tmp_path) == 7
    assert expected_epochs(["train", "--config", str(config), "--epochs", "4"], tmp_path) == 4


def test_launch_runs_everything_once_then_skips(tmp_path: Path) -> None:
    fake = FakeTraining()
    assert launch(_settings(tmp_path), fake) == 10
    assert [_run_dir(a) for a in fake.calls] == [str(r.run_dir(tmp_path)) for r in plan((0, 1))]
    assert all((r.run_dir(tmp_path) / FINISHED).is_file() for r in plan((0, 1)))
    again = FakeTraining()
    assert launch(_settings(tmp_path), again) == 0
    assert again.calls == []
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert [r["key"] for r in saved["runs"]] == [r.key for r in plan((0, 1))]


def test_a_failed_run_stops_the_launcher_and_is_resumed_next_time(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="lr_scaled/seed0 exited 1"):
        launch(_settings(tmp_path), FakeTraining(fail_on="lr_scaled/seed0"))
    later = FakeTraining()
    launch(_settings(tmp_path), later)
    # plain and ge of seed 0 finished before the failure: not run again.
    assert _run_dir(later.calls[0]).endswith("lr_scaled/seed0") and len(later.calls) == 8


def test_an_unfinished_run_is_resumed_not_marked_finished(tmp_path: Path) -> None:
    settings = LaunchSettings(tmp_path, tuple(plan((0,), ("plain",))), epochs_of=lambda a: EPOCHS)
    assert launch(settings, FakeTraining(epochs_per_call=2)) == 0  # stopped after 2 of 3 epochs
    run_dir = tmp_path / "plain" / "seed0"
    assert not (run_dir / FINISHED).exists()
    assert "stopped before its last epoch" in (tmp_path / "launcher.log").read_text()
    assert launch(settings, FakeTraining(epochs_per_call=2)) == 1
    assert "resuming plain/seed0" in (tmp_path / "launcher.log").read_text()
    assert [e["epoch"] for e in read_log(run_dir)] == [1, 2, 3]


class ConcurrentTraining(FakeTraining):
    """FakeTraining that takes a little time and records which runs trained at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.overlaps: list[frozenset[str]] = []

    def __call__(self, argv: list[str], log_file: Path) -> int:
        key = "/".join(Path(_run_dir(argv)).parts[-2:])
        with self.lock:
            self.active.add(key)
            self.overlaps.append(frozenset(self.active))
        time.sleep(0.05)
        code = super().__call__(argv, log_file)
        with self.lock:
            self.active.discard(key)
        return code


def test_jobs_train_runs_side_by_side_and_stage2_waits_for_its_parent(tmp_path: Path) -> None:
    settings = LaunchSettings(tmp_path, tuple(plan((0,))), epochs_of=lambda a: EPOCHS, jobs=2, threads=1)
    fake = ConcurrentTraining()
    assert launch(settings, fake) == 5
    assert max(len(o) for o in fake.overlaps) == 2  # two at a time, never three
    assert all("threads=1" in a for a in fake.calls)
    order = [_run_dir(a).split(str(tmp_path))[1] for a in fake.calls]
    for child, parent in (("/ge+isc_kd/seed0", "/ge/seed0"), ("/plain+isc_kd/seed0", "/plain/seed0")):
        assert order.index(child) > order.index(parent)
        started_with = next(o for o in fake.overlaps if child[1:] in o)
        assert parent[1:] not in started_with  # the parent had finished when the child began
    assert "all 5 runs finished" in (tmp_path / "launcher.log").read_text()


def test_one_launcher_per_runs_directory(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    with FileLock(str(tmp_path / LOCK)), pytest.raises(LauncherError, match="another launcher"):
        launch(_settings(tmp_path), FakeTraining())


def test_read_log_counts_a_redone_epoch_once(tmp_path: Path) -> None:
    records = [{"stage": "s", "epoch": e, "epoch_s": s} for e, s in ((1, 5.0), (2, 6.0), (2, 7.0))]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [(r["epoch"], r["epoch_s"]) for r in read_log(tmp_path)] == [(1, 5.0), (2, 7.0)]
