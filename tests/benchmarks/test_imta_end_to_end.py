"""The factorial end to end on synthetic images: run, run again (skips), evaluate, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.imta.cli import main
from benchmarks.imta.launcher import REPO
from benchmarks.imta.plan import ARM_NAMES, STAGE1_CONFIG, STAGE2_CONFIG

TINY = (
    "--", "--epochs", "1", "--set", "data.source=synthetic", "--set", "data.synthetic_size=240",
    "--set", "data.n_val=60", "--set", "data.n_test=60", "--set", "batch_size=32",
    "--set", "threads=1",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(
    not (REPO / STAGE1_CONFIG).is_file() or not (REPO / STAGE2_CONFIG).is_file(),
    reason="the factorial's configs (configs/imta/) are not in this checkout",
)
def test_launch_evaluate_report(tmp_path: Path) -> None:
    runs, out, md = tmp_path / "runs", tmp_path / "out", tmp_path / "BENCHMARKS.md"
    assert main(["run", "--runs-dir", str(runs), "--seeds", "0", *TINY]) == 0
    assert main(["run", "--runs-dir", str(runs), "--seeds", "0", *TINY]) == 0  # all skipped
    assert main(["evaluate", "--runs-dir", str(runs), "--out", str(out), "--resamples", "200"]) == 0
    results = json.loads((out / "imta.json").read_text())
    assert results["n_eval"] == 60 and results["epochs"] == 1
    assert set(results["arms"]) == set(ARM_NAMES)
    assert all(len(accs) == 5 for seeds in results["arms"].values() for accs in seeds.values())
    log = (runs / "launcher.log").read_text()
    assert log.count("starting") == 5 and log.endswith("all 5 runs finished\n")
    md.write_text("# Benchmarks\n\n## Serving\n\nrows\n")
    assert main(["report", "--out", str(out), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "## IMTA factorial" in text and "### Verdict" in text and text.endswith("rows\n")
    assert (out / "imta" / "anytime.png").is_file() and (out / "imta" / "budgeted.png").is_file()
