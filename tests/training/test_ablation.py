"""The recipe ablation: rows train (resumably) from one plan, the report applies the keep rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from training.ablation import keep, load_plan, results
from training.cli import main
from training.config import ConfigError

from .helpers import tiny_config, write_config

TINY_WIDENET = {
    "name": "widenet",
    "kwargs": {"groups": [[16, 1, True], [32, 1, True]], "exit_after": [0, 1]},
}


@pytest.mark.parametrize(
    ("delta", "costs_more", "kept"),
    [
        (0.3, True, True),
        (0.29, True, False),
        (0.0, False, True),
        (-0.01, False, False),
        (0.1, False, True),
    ],
)
def test_keep_rule(delta: float, costs_more: bool, kept: bool) -> None:
    assert keep(delta, costs_more, 0.3) is kept


def test_ablation_runs_every_row_resumes_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    base = write_config(tmp_path / "base.yaml", tiny_config(runs / "unused", model=TINY_WIDENET))
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(
        yaml.safe_dump(
            {
                "base_config": str(base),
                "runs_dir": str(runs),
                "rows": {
                    "base": {},
                    "label_smoothing": {"set": {"label_smoothing": 0.2}},
                    "stage2": {
                        "set": {
                            "recipe": "stage2",
                            "init_from": str(runs / "base" / "last.pt"),
                            "model.isc": True,
                            "kd": True,
                            "stage2_epochs": 1,
                        },
                        "costs_more": True,
                    },
                },
            }
        )
    )
    assert main(["ablation", "run", "--plan", str(plan_path)]) == 0
    for row in ("base", "label_smoothing", "stage2"):
        assert (runs / row / "last.pt").is_file()
    recorded = json.loads((runs / "label_smoothing" / "log.jsonl").read_text().splitlines()[0])
    assert recorded["epoch"] == 1
    stamp = (runs / "base" / "last.pt").stat().st_mtime_ns
    assert main(["ablation", "run", "--plan", str(plan_path)]) == 0  # finished rows: nothing retrains
    assert (runs / "base" / "last.pt").stat().st_mtime_ns == stamp

    capsys.readouterr()
    out_json = tmp_path / "ablation.json"
    assert main(["ablation", "report", "--plan", str(plan_path), "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "| base |" in table and "| label_smoothing |" in table and "| stage2 |" in table
    rows = results(load_plan(plan_path))
    assert [r.name for r in rows] == ["base", "label_smoothing", "stage2"]
    base_row, ls_row = rows[0], rows[1]
    assert base_row.delta is None and base_row.kept is None
    assert ls_row.delta is not None
    assert ls_row.delta == pytest.approx(ls_row.mean_acc - base_row.mean_acc)
    assert ls_row.kept is keep(ls_row.delta, False, 0.3)
    assert json.loads(out_json.read_text())[1]["name"] == "label_smoothing"


def test_plan_must_start_with_the_base_row(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"base_config": "b.yaml", "runs_dir": "r", "rows": {"ls": {}}}))
    with pytest.raises(ConfigError, match="first row must be 'base'"):
        load_plan(plan)


def test_shipped_plan_rows_are_valid_configs() -> None:
    """Every row of the frontier ablation builds a valid config (checked before any row trains)."""
    from training.ablation import row_overrides
    from training.config import load_config

    plan = load_plan(Path("configs/frontier/ablation.yaml"))
    configs = {
        name: load_config(plan.base_config, row_overrides(row)) for name, row in plan.rows.items()
    }
    assert {c.model.name for c in configs.values()} == {"widenet"}
    assert {c.epochs for n, c in configs.items() if n != "longer"} == {configs["base"].epochs}
