"""The recipe ablation: rows train (resumably) from one plan, the report applies the keep rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from training.ablation import keep, load_plan, plan_runs, read_row, results, row_command, table
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


def _seeded_plan(tmp_path: Path, **rows: dict[str, Any]) -> Path:
    runs = tmp_path / "runs"
    base = write_config(tmp_path / "base.yaml", tiny_config(runs / "unused", model=TINY_WIDENET))
    stage2 = tiny_config(
        runs / "unused", model={**TINY_WIDENET, "isc": True}, recipe="stage2", kd=True, stage2_epochs=3
    )
    write_config(tmp_path / "stage2.yaml", stage2)
    plan = {"base_config": str(base), "runs_dir": str(runs), "base_row": "plain", "seeds": [0, 1]}
    plan["rows"] = rows or {
        "plain": {},
        "plain+heads": {"config": str(tmp_path / "stage2.yaml"), "init_from": "plain"},
    }
    (path := tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def test_seeded_plan_commands_read_the_earlier_row_at_the_same_seed(tmp_path: Path) -> None:
    plan = load_plan(_seeded_plan(tmp_path))
    assert plan_runs(plan) == [("plain", 0), ("plain+heads", 0), ("plain", 1), ("plain+heads", 1)]
    cmd = row_command(plan, "plain+heads", 1, ["epochs=2"])
    runs = tmp_path / "runs"
    assert cmd[cmd.index("--config") + 1] == str(tmp_path / "stage2.yaml")
    assert cmd[cmd.index("--run-dir") + 1] == str(runs / "plain+heads" / "seed1")
    assert cmd[cmd.index("--init-from") + 1] == str(runs / "plain" / "seed1" / "last.pt")
    assert cmd[-4:] == ["--set", "seed=1", "--set", "epochs=2"]  # the command line's --set wins
    assert "--resume" not in cmd


def test_seeded_plan_trains_every_seed_and_reports_their_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_path = _seeded_plan(tmp_path)
    assert main(["ablation", "run", "--plan", str(plan_path), "--set", "optim.lr=0.04"]) == 0
    runs = tmp_path / "runs"
    for row, seed in (("plain", 0), ("plain", 1), ("plain+heads", 0), ("plain+heads", 1)):
        blob = torch.load(runs / row / f"seed{seed}" / "last.pt", weights_only=False)
        assert blob["complete"] and blob["config"]["seed"] == seed
        assert blob["config"]["optim"]["lr"] == 0.04
    heads = torch.load(runs / "plain+heads" / "seed1" / "last.pt", weights_only=False)["config"]
    assert heads["init_from"] == str(runs / "plain" / "seed1" / "last.pt")
    capsys.readouterr()
    assert main(["ablation", "report", "--plan", str(plan_path)]) == 0
    assert "| plain (mean of 2 seeds) |" in capsys.readouterr().out
    plain, heads_row = results(load_plan(plan_path))
    seeds = [read_row(runs / "plain" / f"seed{s}") for s in (0, 1)]
    assert all(r is not None for r in seeds)
    per_exit = [sum(col) / 2 for col in zip(*(r[1] for r in seeds if r), strict=True)]
    assert plain.exit_acc == pytest.approx(per_exit) and plain.seeds == 2
    assert heads_row.delta == pytest.approx(heads_row.mean_acc - plain.mean_acc)
    # a stage2 run trains `epochs` (stage2_epochs is the two-stage recipe's): finished at 1 epoch
    assert heads_row.planned == heads_row.epochs == 1 and heads_row.kept is not None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            {"plain": {}, "b": {"init_from": "c"}, "c": {}},
            "starts from 'c', which is not an earlier row",
        ),
        ({"base": {}}, "first row must be 'plain'"),
    ],
)
def test_seeded_plan_errors(tmp_path: Path, rows: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_plan(_seeded_plan(tmp_path, **rows))


def test_repeated_seeds_are_refused(tmp_path: Path) -> None:
    path = _seeded_plan(tmp_path)
    path.write_text(path.read_text().replace("- 1", "- 0"))
    with pytest.raises(ConfigError, match="distinct"):
        load_plan(path)


def test_read_row_counts_a_redone_epoch_once(tmp_path: Path) -> None:
    records = [(1, 5.0, 0.5), (2, 6.0, 0.6), (2, 7.0, 0.7)]  # epoch 2 logged, killed, redone
    (tmp_path / "log.jsonl").write_text(
        "".join(
            json.dumps({"epoch": e, "epoch_s": s, "val_exit_acc": [a]}) + "\n" for e, s, a in records
        )
    )
    assert read_row(tmp_path) == (2, [70.0], 12.0)


def test_an_unfinished_row_gets_no_verdict(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    base = write_config(
        tmp_path / "base.yaml", tiny_config(runs / "unused", epochs=4, model=TINY_WIDENET)
    )
    plan_path = tmp_path / "plan.yaml"
    rows = {"base": {}, "label_smoothing": {"set": {"label_smoothing": 0.2}}}
    plan_path.write_text(yaml.safe_dump({"base_config": str(base), "runs_dir": str(runs), "rows": rows}))
    for name, epochs, acc in (("base", 4, 0.5), ("label_smoothing", 2, 0.9)):  # killed after 2 of 4
        (runs / name).mkdir(parents=True)
        (runs / name / "log.jsonl").write_text(
            "".join(
                json.dumps({"epoch": e, "epoch_s": 1.0, "val_exit_acc": [acc, acc]}) + "\n"
                for e in range(1, epochs + 1)
            )
        )
    base_row, running = results(load_plan(plan_path))
    assert (base_row.epochs, base_row.planned) == (4, 4)
    assert (running.epochs, running.planned, running.delta) == (2, 4, pytest.approx(40.0))
    assert running.kept is None  # +40 points, but not finished: no verdict yet
    assert "| label_smoothing | 2 of 4 |" in table([base_row, running])
    assert table([base_row, running]).rstrip().endswith("| running |")
