"""``python -m training ablation run|report --plan FILE``: a recipe ablation, one row per ingredient.

A plan (YAML, :class:`AblationPlan`) names a base config and rows; each row is the base with a
few keys changed (one ingredient) and says, before any run is read, whether the ingredient costs
more training time. A row may start from another config (``config``) and from the finished
network of an earlier row (``init_from``: IMTA's stage 2 on a stage-1 network), and a plan may
name ``seeds``: every row then trains once per seed, in ``<runs_dir>/<row>/seed<N>``, seed by
seed (an early stop leaves whole seeds), a row's ``init_from`` read at its own seed. ``run``
trains the runs one after the other, each in its own run directory and resumable (an
interrupted ablation goes on where it stopped; a finished run is skipped). ``report`` reads the
rows' logs (the mean over a row's seeds) and applies the rule stated with the plan:

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
from training.markdown import table as markdown_table

BASE_ROW = "base"


class AblationRow(BaseModel):
    """One ingredient: dotted config keys set over the base (``{}`` for the base row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    set: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value")
    config: Path | None = Field(None, description="this row's config instead of the base config")
    init_from: str | None = Field(
        None, description="an earlier row whose finished network it starts from"
    )
    costs_more: bool = Field(False, description="more training time than the base (stated up front)")
    note: str = ""


class AblationPlan(BaseModel):
    """The base config, the rows (the first is the base row) and the keep rule's threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_config: Path
    runs_dir: Path
    base_row: str = BASE_ROW
    seeds: list[int] | None = Field(None, description="every row once per seed (seed=N)")
    min_gain: float = Field(0.3, description="points of mean validation accuracy over exits")
    rows: dict[str, AblationRow]


@dataclass(frozen=True)
class RowResult:
    """A finished (or unfinished) row as its log reads; accuracies in percent."""

    name: str
    seeds: int | None  # how many seeds the figures are the mean of (None: a plan without seeds)
    epochs: int
    planned: int  # the epochs its config trains: fewer logged = unfinished
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
    if next(iter(plan.rows), None) != plan.base_row:
        raise ConfigError(f"ablation plan {path}: the first row must be '{plan.base_row}'")
    names = list(plan.rows)
    for i, (name, row) in enumerate(plan.rows.items()):
        if row.init_from is not None and row.init_from not in names[:i]:
            raise ConfigError(
                f"ablation plan {path}: row {name} starts from {row.init_from!r}, which is not an "
                f"earlier row (earlier: {names[:i]})"
            )
    if plan.seeds is not None and (not plan.seeds or len(set(plan.seeds)) != len(plan.seeds)):
        raise ConfigError(f"ablation plan {path}: seeds must be distinct and at least one: {plan.seeds}")
    return plan


def row_overrides(row: AblationRow) -> list[str]:
    """The row's keys as ``--set key=value`` items (values as JSON, which YAML reads back)."""
    return [f"{key}={json.dumps(value)}" for key, value in row.set.items()]


def run_dir(plan: AblationPlan, name: str, seed: int | None) -> Path:
    """Where row ``name`` trains at ``seed``: ``<runs_dir>/<row>`` or ``<runs_dir>/<row>/seed<N>``."""
    return plan.runs_dir / name if seed is None else plan.runs_dir / name / f"seed{seed}"


def plan_seeds(plan: AblationPlan) -> list[int | None]:
    """The plan's seeds, or ``[None]``: one run per row, at the seed its config says."""
    return [*plan.seeds] if plan.seeds else [None]


def plan_runs(plan: AblationPlan, only: list[str] | None = None) -> list[tuple[str, int | None]]:
    """``(row, seed)`` of every run in training order: seed by seed, the rows in plan order."""
    rows = [n for n in plan.rows if not only or n in only]
    return [(name, seed) for seed in plan_seeds(plan) for name in rows]


def run_overrides(plan: AblationPlan, name: str, seed: int | None, extra: list[str]) -> list[str]:
    """The row's keys, its seed, then ``extra`` (``--set`` of the command line: they win)."""
    return [*row_overrides(plan.rows[name]), *([] if seed is None else [f"seed={seed}"]), *extra]


def init_from(plan: AblationPlan, name: str, seed: int | None) -> dict[str, str]:
    """``{"init_from": the earlier row's checkpoint at the same seed}``, or ``{}``."""
    from training.checkpoint import LAST  # torch: only when a plan runs

    parent = plan.rows[name].init_from
    return {} if parent is None else {"init_from": str(run_dir(plan, parent, seed) / LAST)}


def row_command(
    plan: AblationPlan, name: str, seed: int | None = None, extra: list[str] | None = None
) -> list[str]:
    """The ``training train`` command line of row ``name`` at ``seed`` (resumes when it has a
    checkpoint; ``init_from``: the earlier row's checkpoint at the same seed)."""
    from training.checkpoint import LAST  # torch: only when a plan runs

    row, here = plan.rows[name], run_dir(plan, name, seed)
    cmd = [sys.executable, "-m", "training", "train", "--config", str(row.config or plan.base_config)]
    cmd += ["--run-dir", str(here)]
    if (here / LAST).is_file():
        cmd.append("--resume")
    for path in init_from(plan, name, seed).values():
        cmd += ["--init-from", path]
    for item in run_overrides(plan, name, seed, extra or []):
        cmd += ["--set", item]
    return cmd


def run_plan(plan: AblationPlan, only: list[str] | None = None, extra: list[str] | None = None) -> int:
    """Train every run (of ``only`` these rows) in order; stop at the first that fails."""
    runs = plan_runs(plan, only)
    for name, seed in plan_runs(plan):  # every run's config is checked before the first one trains
        config, items = (
            plan.rows[name].config or plan.base_config,
            run_overrides(plan, name, seed, extra or []),
        )
        load_config(config, items, values=init_from(plan, name, seed))
    for i, (name, seed) in enumerate(runs, 1):
        label = name if seed is None else f"{name}/seed{seed}"
        print(
            f"[ablation {i}/{len(runs)}] {label}: {' '.join(row_overrides(plan.rows[name]))}", flush=True
        )
        code = subprocess.call(row_command(plan, name, seed, extra))
        if code != 0:
            print(f"run {label} stopped with exit code {code}; run again to resume", file=sys.stderr)
            return code
    return 0


def planned_epochs(plan: AblationPlan, name: str, seed: int | None) -> int:
    """The epochs row ``name``'s config trains (both stages of the two-stage recipe; a stage2 row
    trains ``epochs``, as the trainer does)."""
    row = plan.rows[name]
    cfg = load_config(
        row.config or plan.base_config,
        run_overrides(plan, name, seed, []),
        values=init_from(plan, name, seed),
    )
    return cfg.total_epochs()


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of ``RUN/log.jsonl``, one per (stage, epoch): an epoch logged, then
    redone after a kill before its checkpoint was written, counts once (the later record)."""
    from training.trainer import LOG  # torch: only when a log is read

    path, records = run_dir / LOG, dict[tuple[str, int], dict[str, Any]]()
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            r = json.loads(line)
            records[(r.get("stage", ""), r["epoch"])] = r
    return list(records.values())


def read_row(run_dir: Path) -> tuple[int, list[float], float] | None:
    """(epochs logged, last validation accuracy per exit in %, summed epoch seconds), or None."""
    rows = [r for r in read_log(run_dir) if r.get("val_exit_acc")]
    if not rows:
        return None
    acc = [100.0 * a for a in rows[-1]["val_exit_acc"]]
    return len(rows), acc, sum(float(r.get("epoch_s", 0.0)) for r in rows)


def read_seeds(plan: AblationPlan, name: str) -> tuple[int, list[float], float, int] | None:
    """:func:`read_row` over the row's seeds that have logged an epoch: the fewest epochs, the
    mean accuracy per exit, the summed seconds, and how many seeds; None when none has."""
    reads = [r for s in plan_seeds(plan) if (r := read_row(run_dir(plan, name, s))) is not None]
    if not reads:
        return None
    acc = [sum(col) / len(reads) for col in zip(*(a for _, a, _ in reads), strict=True)]
    return min(e for e, _, _ in reads), acc, sum(t for _, _, t in reads), len(reads)


def results(plan: AblationPlan) -> list[RowResult]:
    """Every row that has logged an epoch, with its delta and the rule's verdict."""
    out: list[RowResult] = []
    base_mean: float | None = None
    for name, row in plan.rows.items():
        read = read_seeds(plan, name)
        if read is None:
            continue
        epochs, acc, seconds, n_seeds = read
        planned = planned_epochs(plan, name, plan_seeds(plan)[0])
        mean = sum(acc) / len(acc)
        if name == plan.base_row:
            base_mean = mean
        delta = None if base_mean is None or name == plan.base_row else mean - base_mean
        finished = epochs >= planned
        kept = None if delta is None or not finished else keep(delta, row.costs_more, plan.min_gain)
        seeds = None if plan.seeds is None else n_seeds
        out.append(
            RowResult(name, seeds, epochs, planned, acc, mean, delta, seconds, row.costs_more, kept)
        )
    return out


def table(rows: list[RowResult]) -> str:
    """The ablation as a Markdown table."""
    head = ["row", "epochs", "validation accuracy per exit (%)", "mean", "vs base", "train h",
            "costs more", "kept"]  # fmt: skip
    cells = []
    for r in rows:
        delta = "" if r.delta is None else f"{r.delta:+.2f}"
        kept = "" if r.kept is None else ("yes" if r.kept else "no")
        if r.epochs < r.planned:
            kept = "running"
        accs = " / ".join(f"{a:.2f}" for a in r.exit_acc)
        name = r.name if r.seeds is None else f"{r.name} (mean of {r.seeds} seed{'s' * (r.seeds > 1)})"
        epochs = r.epochs if r.epochs >= r.planned else f"{r.epochs} of {r.planned}"
        cells.append([name, epochs, accs, f"{r.mean_acc:.2f}", delta, f"{r.train_s / 3600:.2f}",
                      "yes" if r.costs_more else "no", kept])  # fmt: skip
    return "\n".join(markdown_table(head, cells))


def add_ablation_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ablation",
        help="train and report a recipe ablation (one row per ingredient, resumable)",
        description="A recipe ablation from a plan (YAML: base_config, runs_dir, min_gain, seeds, "
        "rows with their config keys, config, init_from and whether they cost more time). 'run' "
        "trains the rows in order, resuming where it stopped; 'report' prints the table and the "
        "keep rule's verdicts.",
        epilog="example: python -m training ablation run --plan configs/frontier/ablation.yaml",
    )
    p.add_argument("action", choices=["run", "report"])
    p.add_argument("--plan", type=Path, required=True, help="the ablation plan (YAML)")
    p.add_argument("--only", nargs="+", metavar="ROW", help="run: only these rows")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="extra",
        help="run: set this config key in every run too (a smoke test: --set epochs=1)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, help="report: also write the rows here")
    p.set_defaults(handler=run_ablation)


def run_ablation(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    if args.action == "run":
        return run_plan(plan, args.only, args.extra)
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
