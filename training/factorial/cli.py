"""``python -m training factorial {evaluate,report}``: the factorial's scores and report.

python -m training ablation run --plan configs/imta/factorial.yaml  # every run; again: resumes
python -m training factorial evaluate   # imta.json, imta_stats.json (from the plan's finished runs)
python -m training factorial report     # plots, BENCHMARKS.md section

The results stay beside the other figures of BENCHMARKS.md (``benchmarks/results``), whose
generator includes the section ``report`` writes there; nothing here imports ``benchmarks``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from training.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
PLAN = REPO / "configs" / "imta" / "factorial.yaml"


def add_factorial_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "factorial",
        help="evaluate and report the IMTA factorial (docs/imta.md)",
        description="The pre-registered IMTA factorial, once its plan has been trained by "
        "'ablation run': 'evaluate' scores every finished run on the test images and applies the "
        "pre-registered tests; 'report' draws the plots and writes the IMTA section of "
        "BENCHMARKS.md.",
        epilog="example: python -m training factorial evaluate --seeds 0,1",
    )
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ev = acts.add_parser("evaluate", help="score the finished runs; write imta.json, imta_stats.json")
    ev.add_argument("--plan", type=Path, default=PLAN, help="the factorial's plan (its runs_dir)")
    ev.add_argument("--seeds", help="only these seeds, comma-separated (default: the plan's)")
    ev.add_argument("--out", type=Path, default=RESULTS, help="default benchmarks/results")
    ev.add_argument("--threads", type=int, help="torch threads of the evaluation")
    ev.add_argument("--data-dir", help="override the runs' data.path")
    ev.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (10,000)")
    ev.set_defaults(handler=run_evaluate)
    rp = acts.add_parser("report", help="plots and the IMTA section of BENCHMARKS.md")
    rp.add_argument("--out", type=Path, default=RESULTS, help="where imta_stats.json is")
    rp.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    rp.set_defaults(handler=run_report)


def run_evaluate(args: argparse.Namespace) -> int:
    from training.ablation import load_plan
    from training.factorial.collect import collect
    from training.factorial.results import write_results

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


def run_report(args: argparse.Namespace) -> int:
    from training.factorial.plots import plot_anytime, plot_budgeted, plot_norms
    from training.factorial.report import render_section, update_benchmarks
    from training.factorial.results import STATS

    if not (args.out / STATS).is_file():
        raise ConfigError(
            f"{args.out / STATS} not found: run `python -m training factorial evaluate` first"
        )
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
