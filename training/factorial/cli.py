"""``python -m benchmarks.imta {evaluate,report}``: the factorial's scores and report.

python -m training ablation run --plan configs/imta/factorial.yaml  # every run; again: resumes
python -m benchmarks.imta evaluate   # imta.json, imta_stats.json (from the plan's finished runs)
python -m benchmarks.imta report     # plots, BENCHMARKS.md section
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness.provenance import REPO, RESULTS
from benchmarks.imta.collect import CollectError
from training.config import ConfigError

PLAN = REPO / "configs" / "imta" / "factorial.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.imta", description=(__doc__ or "").split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ev = sub.add_parser("evaluate", help="score the finished runs; write imta.json, imta_stats.json")
    ev.add_argument("--plan", type=Path, default=PLAN, help="the factorial's plan (its runs_dir)")
    ev.add_argument("--seeds", help="only these seeds, comma-separated (default: the plan's)")
    ev.add_argument("--out", type=Path, default=RESULTS, help="default benchmarks/results")
    ev.add_argument("--threads", type=int, help="torch threads of the evaluation")
    ev.add_argument("--data-dir", help="override the runs' data.path")
    ev.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (10,000)")
    rp = sub.add_parser("report", help="plots and the IMTA section of BENCHMARKS.md")
    rp.add_argument("--out", type=Path, default=RESULTS, help="where imta_stats.json is")
    rp.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    return p


def _evaluate(args: argparse.Namespace) -> int:
    from benchmarks.imta.collect import collect
    from benchmarks.imta.results import write_results
    from training.ablation import load_plan

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    scores, book = collect(
        load_plan(args.plan), seeds=seeds, repo=REPO, threads=args.threads, data_dir=args.data_dir
    )
    if not scores:
        print("no finished run to evaluate yet", file=sys.stderr)
        return 1
    write_results(scores, book, args.out, resamples=args.resamples)
    print(f"wrote {args.out / 'imta.json'} and {args.out / 'imta_stats.json'} ({len(scores)} runs)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from benchmarks.imta.plots import plot_anytime, plot_budgeted, plot_norms
    from benchmarks.imta.report import render_section, update_benchmarks
    from benchmarks.imta.results import STATS

    stats = json.loads((args.out / STATS).read_text())
    plots = args.out / "imta"
    plots.mkdir(parents=True, exist_ok=True)
    plot_anytime(stats, plots / "anytime.png")
    plot_budgeted(stats, plots / "budgeted.png")
    plot_norms(stats, plots / "norms.png")
    rel = Path(os.path.relpath(plots.resolve(), args.markdown.resolve().parent)).as_posix()
    section = render_section(stats, rel)
    (args.out / "imta.md").write_text(section)
    update_benchmarks(args.markdown, section)
    print(f"wrote {plots}/*.png, {args.out / 'imta.md'} and the IMTA section of {args.markdown}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _evaluate(args) if args.command == "evaluate" else _report(args)
    except (ConfigError, CollectError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
