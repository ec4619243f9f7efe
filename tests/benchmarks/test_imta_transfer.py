"""``pack`` / ``unpack``: the runs carried to another directory as one file, resumable there."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks.imta.cli import main
from benchmarks.imta.launcher import FINISHED, PID, PLAN, RUNNING


def checkpoint(weights: torch.Tensor) -> dict[str, object]:
    """The keys of a training checkpoint that matter here (training/checkpoint.py)."""
    return {
        "model": {"w": weights}, "optimizer": {"momentum": weights.clone()}, "scheduler": {},
        "scaler": {}, "rng": {"torch": torch.get_rng_state()}, "complete": True, "epoch": 3,
    }  # fmt: skip


def fake_runs(root: Path, weights: int = 16) -> None:
    """A runs directory as the launcher leaves it: a finished stage-1 run, a stage-2 run under
    way (its frozen network copied in), evaluation outputs and the live launcher's markers."""
    stage1, stage2 = root / "ge" / "seed0", root / "ge+isc_kd" / "seed0"
    g = torch.Generator().manual_seed(0)
    for run in (stage1, stage2):
        run.mkdir(parents=True)
        torch.save(checkpoint(torch.randn(weights, generator=g)), run / "last.pt")
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
    old, new, archive = tmp_path / "old", tmp_path / "new", tmp_path / "keep" / "imta.tar.gz"
    fake_runs(old)
    assert main(["pack", "--runs-dir", str(old), "--out", str(archive)]) == 0
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "ge/seed0/last.pt" in names and "ge+isc_kd/seed0/stage1.pt" in names
    assert not names & {"ge/seed0/logits.pt", "ge+isc_kd/seed0/running", PID}

    assert main(["unpack", str(archive), "--runs-dir", str(new)]) == 0
    for rel in ("ge+isc_kd/seed0/last.pt", "ge/seed0/finished.json", "ge+isc_kd/seed0/stage1.pt"):
        assert (new / rel).read_bytes() == (old / rel).read_bytes()
    # A finished run keeps its weights and record, not the states only a resume reads.
    before = torch.load(old / "ge/seed0/last.pt", weights_only=False)
    after = torch.load(new / "ge/seed0/last.pt", weights_only=False)
    assert torch.equal(after["model"]["w"], before["model"]["w"])
    assert (after["complete"], after["epoch"]) == (True, 3)
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(after)
    # The plan names the new place: status reads it before a launcher rewrites it.
    plan = json.loads((new / PLAN).read_text())
    stage2 = plan["runs"][1]
    assert stage2["run_dir"] == str(new.resolve() / "ge+isc_kd" / "seed0")
    assert f"{new.resolve()}/ge/seed0/last.pt" in stage2["command"]
    assert not any(str(old) in part for run in plan["runs"] for part in run["command"])


def test_parts_of_at_most_the_size_asked_join_again(tmp_path: Path) -> None:
    old, new, archive = tmp_path / "old", tmp_path / "new", tmp_path / "imta.tar.gz"
    fake_runs(old, weights=400_000)  # random floats: about 4.5 MiB that gzip cannot shrink
    assert main(["pack", "--runs-dir", str(old), "--out", str(archive), "--part-mib", "1"]) == 0
    parts = sorted(tmp_path.glob("imta.tar.gz.part*"))
    assert len(parts) >= 3 and not archive.exists()
    assert all(p.stat().st_size <= 2**20 for p in parts)
    assert main(["unpack", str(archive), "--runs-dir", str(new)]) == 0
    rel = "ge+isc_kd/seed0/last.pt"
    assert (new / rel).read_bytes() == (old / rel).read_bytes()
    # Packing again in larger parts leaves no surplus part of the previous pack behind.
    assert main(["pack", "--runs-dir", str(old), "--out", str(archive), "--part-mib", "2"]) == 0
    larger = sorted(tmp_path.glob("imta.tar.gz.part*"))
    assert len(larger) < len(parts) and larger == parts[: len(larger)]
    # Packing again without parts replaces the parts by one file.
    assert main(["pack", "--runs-dir", str(old), "--out", str(archive)]) == 0
    assert archive.is_file() and not list(tmp_path.glob("imta.tar.gz.part*"))


def test_unpack_refuses_to_overwrite_runs_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, archive = tmp_path / "old", tmp_path / "imta.tar.gz"
    fake_runs(old)
    assert main(["pack", "--runs-dir", str(old), "--out", str(archive)]) == 0
    packed = (old / "ge+isc_kd" / "seed0" / "last.pt").read_bytes()
    (old / "ge+isc_kd" / "seed0" / "last.pt").write_bytes(b"a later epoch")
    assert main(["unpack", str(archive), "--runs-dir", str(old)]) == 2
    assert "already holds runs" in capsys.readouterr().err
    assert (old / "ge+isc_kd" / "seed0" / "last.pt").read_bytes() == b"a later epoch"
    assert main(["unpack", str(archive), "--runs-dir", str(old), "--force"]) == 0
    assert (old / "ge+isc_kd" / "seed0" / "last.pt").read_bytes() == packed


def test_pack_and_unpack_name_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pack", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "x.tar.gz")]) == 2
    assert "not a runs directory" in capsys.readouterr().err
    assert not (tmp_path / "x.tar.gz").exists()
    assert main(["unpack", str(tmp_path / "x.tar.gz"), "--runs-dir", str(tmp_path / "r")]) == 2
    assert "nor its parts" in capsys.readouterr().err
