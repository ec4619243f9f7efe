"""``pack`` / ``unpack``: the runs carried to another directory as one file, resumable there."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from benchmarks.imta.cli import main
from benchmarks.imta.launcher import FINISHED, PID, PLAN, RUNNING


def fake_runs(root: Path) -> None:
    """A runs directory as the launcher leaves it: a finished stage-1 run, a stage-2 run under
    way (its frozen network copied in), evaluation outputs and the live launcher's markers."""
    stage1, stage2 = root / "ge" / "seed0", root / "ge+isc_kd" / "seed0"
    for run in (stage1, stage2):
        run.mkdir(parents=True)
        (run / "last.pt").write_bytes(b"weights of " + run.name.encode())
        (run / "log.jsonl").write_text('{"epoch": 1, "epoch_s": 2.0}\n')
        (run / "train.log").write_text("epoch 1\n")
    (stage1 / FINISHED).write_text("{}")
    (stage1 / "logits.pt").write_bytes(b"scored again by evaluate")
    (stage2 / "stage1.pt").write_bytes(b"frozen network")
    (stage2 / RUNNING).touch()
    (root / PID).write_text("999999999 999999999\n")  # no such process: not a live launcher
    command = ["python", "-m", "training", "train", "--run-dir", str(stage2),
               "--init-from", f"{stage1}/last.pt", "--resume"]  # fmt: skip
    runs = [{"key": "ge/seed0", "run_dir": str(stage1), "command": ["--run-dir", str(stage1)]},
            {"key": "ge+isc_kd/seed0", "run_dir": str(stage2), "command": command}]  # fmt: skip
    (root / PLAN).write_text(json.dumps({"runs": runs}))


def test_pack_then_unpack_elsewhere_keeps_every_resume_point(tmp_path: Path) -> None:
    old, new, archive = tmp_path / "old", tmp_path / "new", tmp_path / "keep" / "imta.tar"
    fake_runs(old)
    assert main(["pack", "--runs-dir", str(old), "--out", str(archive)]) == 0
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "ge/seed0/last.pt" in names and "ge+isc_kd/seed0/stage1.pt" in names
    assert not names & {"ge/seed0/logits.pt", "ge+isc_kd/seed0/running", PID}

    assert main(["unpack", str(archive), "--runs-dir", str(new)]) == 0
    for rel in ("ge/seed0/last.pt", "ge/seed0/finished.json", "ge+isc_kd/seed0/stage1.pt"):
        assert (new / rel).read_bytes() == (old / rel).read_bytes()
    # The plan names the new place: status reads it before a launcher rewrites it.
    plan = json.loads((new / PLAN).read_text())
    stage2 = plan["runs"][1]
    assert stage2["run_dir"] == str(new.resolve() / "ge+isc_kd" / "seed0")
    assert f"{new.resolve()}/ge/seed0/last.pt" in stage2["command"]
    assert not any(str(old) in part for run in plan["runs"] for part in run["command"])


def test_unpack_refuses_to_overwrite_runs_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, archive = tmp_path / "old", tmp_path / "imta.tar"
    fake_runs(old)
    assert main(["pack", "--runs-dir", str(old), "--out", str(archive)]) == 0
    (old / "ge" / "seed0" / "last.pt").write_bytes(b"a later epoch")
    assert main(["unpack", str(archive), "--runs-dir", str(old)]) == 2
    assert "already holds runs" in capsys.readouterr().err
    assert (old / "ge" / "seed0" / "last.pt").read_bytes() == b"a later epoch"
    assert main(["unpack", str(archive), "--runs-dir", str(old), "--force"]) == 0
    assert (old / "ge" / "seed0" / "last.pt").read_bytes() == b"weights of seed0"


def test_pack_names_a_directory_that_holds_no_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pack", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "x.tar")]) == 2
    assert "not a runs directory" in capsys.readouterr().err
    assert not (tmp_path / "x.tar").exists()
