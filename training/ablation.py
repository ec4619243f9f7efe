"""``python -m training ablation run|report --plan FILE``: a recipe ablation, one row per ingredient.

A plan (YAML, :class:`AblationPlan`) names a base config and rows; each row is the base with a
few keys changed (one ingredient) and says, before any run is read, whether the ingredient costs
more training time. ``run`` trains the rows one after the other, each in its own run directory
and resumable (an interrupted ablation goes on where it stopped; a finished row is skipped).
``report`` reads the rows' logs and applies the rule stated with the plan:

    an ingredient is kept when the mean over exits of validation accuracy rises by at least
    ``min_gain`` points over the base row, or by at least 0 when it costs no more training time.

Accuracies are the last epoch's validation figures of each row's ``log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.config import ConfigError, load_config

BASE_ROW = "base"


class AblationRow(BaseModel):
    """One ingredient: dotted config keys set over the base (``{}`` for the base row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    set: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value")
    costs_more: bool = Field(False, description="more training time than the base (stated up front)")
    note: str = ""


class AblationPlan(BaseModel):
    """The base config, the rows (the first must be ``base``) and the keep rule's threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_config: Path
    runs_dir: Path
    min_gain: float = Field(0.3, description="points of mean validation accuracy over exits")
    rows: dict[str, AblationRow]


@dataclass(frozen=True)
class RowResult:
    """A finished (or unfinished) row as its log reads; accuracies in percent."""

    name: str
    epochs: int
    exit_acc: list[float]
    mean_acc: float
    delta: float | None  # against the base row, points
    train_s: float
    costs_more: bool
    kept: bool | None  # None for the base row and unfinished rows


def keep(delta: float, costs_more: bool, min_gain: float) -> bool:
    """The rule: a gain of ``min_gain`` points, or no loss when the ingredient is free."""
    return delta >= min_gain or (delta >= 0.0 and not costs_more)


def load_plan(path: Path) -> AblationPlan:
    try:
        plan = AblationPlan.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"ablation plan {path}: {e}") from None
    if next(iter(plan.rows), None) != BASE_ROW:
        raise ConfigError(f"ablation plan {path}: the first row must be '{BASE_ROW}'")
    return plan


def row_overrides(row: AblationRow) -> list[str]:
    """The row's keys as ``--set key=value`` items (values as JSON, which YAML reads back)."""
    return [f"{key}={json.dumps(value)}" for key, value in row.set.items()]


def row_command(plan: AblationPlan, name: str) -> list[str]:
    """The ``training train`` command line of row ``name`` (resumes when it has a checkpoint)."""
    from training.checkpoint import LAST  # torch: only when a plan runs

    run_dir = plan.runs_dir / name
    cmd = [sys.executable, "-m", "training", "train", "--config", str(plan.base_config)]
    cmd += ["--run-dir", str(run_dir)]
    if (run_dir / LAST).is_file():
        cmd.append("--resume")
    for item in row_overrides(plan.rows[name]):
        cmd += ["--set", item]
    return cmd


def run_plan(plan: AblationPlan, only: list[str] | None = None) -> int:
    """Train every row (or ``only`` these) in order; stop at the first that fails."""
    for name in plan.rows:  # every row's config is checked before the first one trains
        load_config(plan.base_config, row_overrides(plan.rows[name]))
    names = [n for n in plan.rows if not only or n in only]
    for i, name in enumerate(names, 1):
        print(
            f"[ablation {i}/{len(names)}] {name}: {' '.join(row_overrides(plan.rows[name]))}", flush=True
        )
        code = subprocess.call(row_command(plan, name))
        if code != 0:
            print(f"row {name} stopped with exit code {code}; run again to resume", file=sys.stderr)
            return code
    return 0


def read_row(run_dir: Path) -> tuple[int, list[float], float] | None:
    """(epochs logged, last validation accuracy per exit in %, summed epoch seconds), or None."""
    from training.trainer import LOG  # torch: only when a report is read

    log = run_dir / LOG
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("val_exit_acc")]
    if not rows:
        return None
    acc = [100.0 * a for a in rows[-1]["val_exit_acc"]]
    return len(rows), acc, sum(float(r.get("epoch_s", 0.0)) for r in rows)


def results(plan: AblationPlan) -> list[RowResult]:
    """Every row that has logged an epoch, with its delta and the rule's verdict."""
    out: list[RowResult] = []
    base_mean: float | None = None
    for name, row in plan.rows.items():
        read = read_row(plan.runs_dir / name)
        if read is None:
            continue
        epochs, acc, seconds = read
        mean = sum(acc) / len(acc)
        if name == BASE_ROW:
            base_mean = mean
        delta = None if base_mean is None or name == BASE_ROW else mean - base_mean
        kept = None if delta is None else keep(delta, row.costs_more, plan.min_gain)
        out.append(RowResult(name, epochs, acc, mean, delta, seconds, row.costs_more, kept))
    return out


def table(rows: list[RowResult]) -> str:
    """The ablation as a Markdown table."""
    lines = [
        "| row | epochs | validation accuracy per exit (%) | mean | vs base | train h "
        "| costs more | kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "" if r.delta is None else f"{r.delta:+.2f}"
        kept = "" if r.kept is None else ("yes" if r.kept else "no")
        accs = " / ".join(f"{a:.2f}" for a in r.exit_acc)
        lines.append(
            f"| {r.name} | {r.epochs} | {accs} | {r.mean_acc:.2f} | {delta} | {r.train_s / 3600:.2f} "
            f"| {'yes' if r.costs_more else 'no'} | {kept} |"
        )
    return "\n".join(lines)


def add_ablation_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ablation",
        help="train and report a recipe ablation (one row per ingredient, resumable)",
        description="A recipe ablation from a plan (YAML: base_config, runs_dir, min_gain, rows "
        "with their config keys and whether they cost more time). 'run' trains the rows in order, "
        "resuming where it stopped; 'report' prints the table and the keep rule's verdicts.",
        epilog="example: python -m training ablation run --plan configs/frontier/ablation.yaml",
    )
    p.add_argument("action", choices=["run", "report"])
    p.add_argument("--plan", type=Path, required=True, help="the ablation plan (YAML)")
    p.add_argument("--only", nargs="+", metavar="ROW", help="run: only these rows")
    p.add_argument("--json", type=Path, help="report: also write the rows here")
    p.set_defaults(handler=run_ablation)


def run_ablation(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    if args.action == "run":
        return run_plan(plan, args.only)
    rows = results(plan)
    if not rows:
        print(f"no row of {args.plan} has logged an epoch under {plan.runs_dir}", file=sys.stderr)
        return 1
    print(table(rows))
    print(
        f"rule: kept when mean validation accuracy over exits rises >= {plan.min_gain} points, "
        "or >= 0 when the ingredient costs no more training time"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0
