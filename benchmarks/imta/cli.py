"""``python -m benchmarks.imta {run,evaluate,report}``.

    python -m benchmarks.imta run --runs-dir runs/imta --jobs 2  # every run; again: resumes
    python -m benchmarks.imta evaluate --runs-dir runs/imta     # imta.json, imta_stats.json
    python -m benchmarks.imta report                            # plots, BENCHMARKS.md section

Extra training arguments for every run go after ``--`` (a smoke test:
``run --runs-dir /tmp/imta -- --epochs 1 --set data.limit_train=512``).
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
from benchmarks.imta.launcher import LauncherError, LaunchSettings, launch, subprocess_runner
from benchmarks.imta.plan import ARM_NAMES, DEFAULT_SEEDS, PlanError, parse_seeds, plan
from training.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.imta", description=(__doc__ or "").split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, runs_dir: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text)
        if runs_dir:
            c.add_argument(
                "--runs-dir", type=Path, required=True, help="parent of <arm>/seed<N> run dirs"
            )
        return c

    r = command("run", "train every unfinished run in order (resumes each; launcher.log)")
    r.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="default: 0,1,2")
    r.add_argument("--arms", default=",".join(ARM_NAMES), help="default: all five")
    r.add_argument(
        "--jobs",
        type=_positive,
        default=1,
        help="runs trained at the same time, each with cores/jobs torch threads (default 1; "
        "on 2 cores, 2 one-thread runs train ~1.3x the images/s of one two-thread run)",
    )
    r.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then `train` arguments")
    ev = command("evaluate", "score the finished runs; write imta.json, imta_stats.json")
    ev.add_argument("--seeds", help="only these seeds (default: the plan's)")
    ev.add_argument("--out", type=Path, default=RESULTS, help="default benchmarks/results")
    ev.add_argument("--threads", type=int, help="torch threads of the evaluation")
    ev.add_argument("--data-dir", help="override the runs' data.path")
    ev.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (10,000)")
    rp = command("report", "plots and the IMTA section of BENCHMARKS.md", runs_dir=False)
    rp.add_argument("--out", type=Path, default=RESULTS, help="where imta_stats.json is")
    rp.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    return p


def _positive(text: str) -> int:
    if (value := int(text)) < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _overrides(args: argparse.Namespace) -> tuple[str, ...]:
    extra = list(args.overrides)
    return tuple(extra[1:] if extra[:1] == ["--"] else extra)


def _run(args: argparse.Namespace) -> int:
    runs = plan(parse_seeds(args.seeds), tuple(a for a in args.arms.split(",") if a))
    runs_dir = args.runs_dir.resolve()
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    s = LaunchSettings(runs_dir, tuple(runs), _overrides(args), jobs=args.jobs, threads=threads)
    launch(s, subprocess_runner(REPO))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from benchmarks.imta.collect import collect
    from benchmarks.imta.results import write_results

    seeds = parse_seeds(args.seeds) if args.seeds else None
    scores, book = collect(
        args.runs_dir.resolve(), seeds=seeds, repo=REPO, threads=args.threads, data_dir=args.data_dir
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
        if args.command == "run":
            return _run(args)
        if args.command == "evaluate":
            return _evaluate(args)
        return _report(args)
    except (PlanError, LauncherError, ConfigError, CollectError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
