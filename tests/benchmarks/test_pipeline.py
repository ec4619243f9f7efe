"""``python -m benchmarks`` end to end on synthetic data: five arms, a package, real HTTP loads."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.ablation import ARMS
from benchmarks.harness.provenance import command
from benchmarks.pipeline import main
from benchmarks.profile import py_spy


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("runs")
    out = tmp_path_factory.mktemp("out")
    argv = [
        "--synthetic", "--runs-root", str(root), "--out", str(out), "--threads", "1",
        "--no-grid", "--concurrency", "4", "--requests", "40", "--max-seconds", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    return root, out, json.loads((out / "results.json").read_text())


def test_every_arm_has_per_exit_accuracy_and_flops(bench: tuple[Path, Path, dict[str, Any]]) -> None:
    _, _, results = bench
    arms = results["ablation"]
    assert [a["arm"] for a in arms] == [a.name for a in ARMS]
    flops = arms[0]["exit_mult_adds_millions"]
    assert len(flops) == 5 and all(b > a for a, b in itertools.pairwise(flops))
    for a in arms:
        # Same architecture for every arm (the ISC link adds a few multiply-adds per exit).
        assert a["exit_mult_adds_millions"] == pytest.approx(flops, rel=1e-3)
        assert all(0.0 <= v <= 1.0 for v in a["test_exit_accuracy"])
        assert a["epochs"] == (2 if a["arm"] == "two_stage" else 1)
        # Budget 1.0 runs every image to the last exit: its accuracy is the last exit's.
        full = next(r for r in a["budgets"] if r["budget"] == 1.0)
        assert full["optimised"]["compute"] == pytest.approx(1.0)
        assert full["optimised"]["accuracy"] == pytest.approx(a["test_exit_accuracy"][-1])
    # The five arms' four findings + the paper's figures + three follow-up findings + the quick note.
    assert len(results["findings"]) == 9
    assert sum(f.startswith(("Twice the epochs", "KD with the official KL", "ISC + KD without GE"))
               for f in results["findings"]) == 3  # fmt: skip


def test_serving_measures_labelled_loads(bench: tuple[Path, Path, dict[str, Any]]) -> None:
    _, _, results = bench
    loads = results["serving"]["loads"]
    closed = {r["budget"]: r for r in loads["closed_loop"]}
    assert 1.0 in closed and len(closed) >= 2
    for r in loads["closed_loop"] + loads["open_loop"]:
        assert r["requests"] > 0 and r["errors"] == 0
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert closed[1.0]["mean_compute_fraction"] == pytest.approx(1.0)
    cheapest = closed[min(closed)]
    assert cheapest["mean_compute_fraction"] < 1.0  # a budget below 1 really exits early
    assert {r["budget"] for r in loads["open_loop"]} == set(closed)
    assert "speedup_within_half_point" in results["serving"]["headline"]
    assert results["serving"]["package"]["name"] == "ablation-imta"  # a quick run serves its arm
    if py_spy() is not None:  # the test extra installs it; the profile names the engine's thread
        prof = loads["profile"]
        assert prof["top_frames"] and sum(v for _, v in prof["top_frames"]) <= 1.0 + 1e-9
        assert any("engine-" in t for t, _ in prof["threads"])


def test_outputs_written(bench: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, results = bench
    md = (out / "BENCHMARKS.md").read_text()
    assert "Quick smoke run" in md and results["meta"]["commit"] in md
    assert "| + GE + ISC + KD (joint) |" in md and "| closed | 1.0 |" in md
    assert "Package served: `" in md
    for png in ("ablation.png", "serving.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_rerun_resumes_instead_of_retraining(bench: tuple[Path, Path, dict[str, Any]]) -> None:
    root, out, _ = bench
    runs = root / "synthetic"
    before = {a.name: (runs / a.name / "last.pt").stat().st_mtime_ns for a in ARMS}
    argv = ["--synthetic", "--runs-root", str(root), "--out", str(out / "again"), "--skip-serving"]
    assert main(argv) == 0
    after = {a.name: (runs / a.name / "last.pt").stat().st_mtime_ns for a in ARMS}
    assert after == before
    again = json.loads((out / "again" / "results.json").read_text())
    assert [a["epochs"] for a in again["ablation"]] == [2 if a.name == "two_stage" else 1 for a in ARMS]


def test_unknown_arm_is_an_error_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--synthetic", "--runs-root", str(tmp_path), "--arms", "ge,nope"]) == 2
    err = capsys.readouterr().err
    assert "['nope']" in err and "ge_isc_kd" in err
    assert not (tmp_path / "synthetic").exists()  # nothing was trained


def test_missing_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--runs-root", str(tmp_path), "--arms", "plain", "--out", str(tmp_path / "o")]
    assert main([*argv, "--data-dir", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "data not found" in err and "arm plain" in err and "exited 3" in err


def test_the_recorded_command_reproduces_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert command("benchmarks.engine_modes", ["--seconds", "5", "--data-dir", "a b"]) == (
        "python -m benchmarks.engine_modes --seconds 5 --data-dir 'a b'"
    )
    # From the command line main() gets argv=None: the process's own arguments are recorded.
    monkeypatch.setattr("sys.argv", ["engine_modes.py", "--repeat", "1"])
    assert command("benchmarks.engine_modes", None).endswith("engine_modes --repeat 1")
    assert command("benchmarks", []) == "python -m benchmarks"
