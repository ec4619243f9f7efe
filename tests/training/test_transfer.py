"""pack / unpack: runs carried as one file (or parts) resume exactly where they stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.checkpoint import RESUME_ONLY, load_checkpoint
from training.cli import main

from .helpers import tiny_config, write_config


def test_pack_unpack_resume_equals_uninterrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    # a finished run (a teacher) and an unfinished one
    done = write_config(tmp_path / "a.yaml", tiny_config(runs / "teacher", epochs=1))
    assert main(["train", "--config", str(done)]) == 0
    part = write_config(tmp_path / "b.yaml", tiny_config(runs / "student", epochs=3, stop_after=2))
    assert main(["train", "--config", str(part)]) == 0
    pack = tmp_path / "store" / "runs.tar.gz"
    assert main(["pack", "--runs-dir", str(runs), "--out", str(pack), "--part-mib", "1"]) == 0
    assert not pack.exists() and (pack.parent / "runs.tar.gz.part00").is_file()

    moved = tmp_path / "elsewhere"
    assert main(["unpack", str(pack), "--runs-dir", str(moved)]) == 0
    assert main(["unpack", str(pack), "--runs-dir", str(moved)]) == 5  # would overwrite
    assert "pass --force" in capsys.readouterr().err
    finished = load_checkpoint(moved / "teacher" / "last.pt")
    assert finished["complete"] and not set(RESUME_ONLY) & finished.keys()
    assert "optimizer" in load_checkpoint(moved / "student" / "last.pt")  # the exact resume point

    # the unpacked run resumes to the weights of an uninterrupted one
    rest = tiny_config(moved / "student", epochs=3)
    assert main(["train", "--config", str(write_config(tmp_path / "c.yaml", rest)), "--resume"]) == 0
    whole = write_config(tmp_path / "d.yaml", tiny_config(tmp_path / "whole", epochs=3))
    assert main(["train", "--config", str(whole)]) == 0
    a = load_checkpoint(moved / "student" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nothing_to_pack_or_unpack_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pack", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "x.tar.gz")]) == 5
    assert main(["unpack", str(tmp_path / "nope.tar.gz"), "--runs-dir", str(tmp_path)]) == 5
    err = capsys.readouterr().err
    assert "no run" in err and "not found" in err and "Traceback" not in err
