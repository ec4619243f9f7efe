"""The factorial end to end on synthetic images: its plan run by the ablation runner (and run
again: nothing retrains), then ``training factorial evaluate`` and ``report``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from training.ablation import load_plan
from training.cli import main
from training.factorial.analysis import ARM_NAMES
from training.factorial.cli import PLAN, REPO

TINY = [
    "epochs=1", "data.source=synthetic", "data.synthetic_size=240", "data.n_val=60",
    "data.n_test=60", "batch_size=32", "threads=1", "progress=false",
]  # fmt: skip


def test_the_plan_is_the_factorial() -> None:
    """The plan's rows are the analysis's arms, each stage-2 arm on its own stage-1 arm."""
    plan = load_plan(PLAN)
    assert tuple(plan.rows) == ARM_NAMES and plan.seeds == [0, 1, 2]
    assert {n: r.init_from for n, r in plan.rows.items() if r.init_from} == {
        "ge+isc_kd": "ge", "plain+isc_kd": "plain",
    }  # fmt: skip


@pytest.mark.slow
def test_run_evaluate_report(tmp_path: Path) -> None:
    runs, out, md = tmp_path / "runs", tmp_path / "out", tmp_path / "BENCHMARKS.md"
    raw = yaml.safe_load(PLAN.read_text())
    raw |= {"runs_dir": str(runs), "seeds": [0], "base_config": str(REPO / raw["base_config"])}
    for row in raw["rows"].values():
        row.update({"config": str(REPO / row["config"])} if "config" in row else {})
    plan = tmp_path / "factorial.yaml"
    plan.write_text(yaml.safe_dump(raw, sort_keys=False))
    extra = [a for item in TINY for a in ("--set", item)]
    assert main(["ablation", "run", "--plan", str(plan), *extra]) == 0
    stamp = (runs / "ge" / "seed0" / "last.pt").stat().st_mtime_ns
    assert main(["ablation", "run", "--plan", str(plan), *extra]) == 0  # all finished
    assert (runs / "ge" / "seed0" / "last.pt").stat().st_mtime_ns == stamp
    evaluate = ["factorial", "evaluate", "--plan", str(plan), "--out", str(out), "--resamples", "200"]
    assert main(evaluate) == 0
    results = json.loads((out / "imta.json").read_text())
    assert results["n_eval"] == 60 and results["epochs"] == 1
    assert set(results["arms"]) == set(ARM_NAMES)
    assert all(len(accs) == 5 for seeds in results["arms"].values() for accs in seeds.values())
    md.write_text("# Benchmarks\n\n## Serving\n\nrows\n")
    assert main(["factorial", "report", "--out", str(out), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "## IMTA factorial" in text and "### Verdict" in text and text.endswith("rows\n")
    assert (out / "imta" / "anytime.png").is_file() and (out / "imta" / "budgeted.png").is_file()


def test_evaluate_and_report_say_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No finished run: evaluate exits 1; bad seeds, or report before evaluate: exit 2, one line."""
    raw = yaml.safe_load(PLAN.read_text()) | {"runs_dir": str(tmp_path / "runs")}
    plan, out = tmp_path / "factorial.yaml", tmp_path / "out"
    plan.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["factorial", "evaluate", "--plan", str(plan), "--out", str(out)]) == 1
    assert "no finished run to evaluate yet" in capsys.readouterr().err
    assert main(["factorial", "evaluate", "--plan", str(plan), "--seeds", "0,x"]) == 2
    assert "--seeds must be comma-separated integers, got '0,x'" in capsys.readouterr().err
    assert main(["factorial", "report", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run `python -m training factorial evaluate` first" in err
    assert not out.exists()
