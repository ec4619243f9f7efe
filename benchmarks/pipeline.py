"""``python -m benchmarks`` (``make bench``): the IMTA ablation, then the serving figures, then
``BENCHMARKS.md``. Resumable: every ablation arm is a training run directory under ``--runs-root``.

    .venv/bin/python -m benchmarks --quick        # minutes: smoke run, not evidence
    .venv/bin/python -m benchmarks                # the published figures (hours on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.ablation import ARMS, BEST, AblationError, AblationSettings, run_ablation
from benchmarks.loadgen import labelled_test_split
from benchmarks.report import plot_ablation, plot_serving, render

REPO = Path(__file__).resolve().parent.parent
FULL_COMMAND = (
    "make bench  # = .venv/bin/python -m benchmarks --runs-root runs/ablation; "
    "rerunning resumes every arm from <runs-root>/<arm>/last.pt"
)
QUICK_TRAIN = ("--epochs", "1", "--set", "stage2_epochs=1", "--set", "data.limit_train=2000")
SYNTHETIC_DATA = (
    "--set", "data.source=synthetic", "--set", "data.synthetic_size=360",
    "--set", "data.n_val=80", "--set", "data.n_test=80", "--set", "batch_size=32",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 epoch on 2,000 images, short loads")
    p.add_argument("--synthetic", action="store_true", help="synthetic images (tests; no ../shared)")
    p.add_argument(
        "--runs-root",
        type=Path,
        default=REPO / "runs" / "ablation",
        help="parent of the arms' run dirs (default runs/ablation in the repository)",
    )
    p.add_argument("--data-dir", help="CIFAR-10 JPEG archive or tree (default: the config's)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results[/quick])")
    p.add_argument(
        "--markdown",
        type=Path,
        help="markdown to regenerate (default BENCHMARKS.md; a quick run writes it only while no "
        "full results exist, else into its --out folder)",
    )
    p.add_argument("--threads", type=int, help="torch threads for training (default: the config's 2)")
    p.add_argument("--arms", default=",".join(a.name for a in ARMS), help="ablation arms to run")
    p.add_argument(
        "--report-only", action="store_true", help="re-render plots and BENCHMARKS.md from results.json"
    )
    p.add_argument("--skip-serving", action="store_true", help="ablation only")
    p.add_argument(
        "--serve-package",
        type=Path,
        help="model package for the serving figures (default: packages/default, the shipped model, "
        "in a full run; the GE + ISC + KD arm's own package in --quick / --synthetic runs)",
    )
    p.add_argument(
        "--only",
        choices=["peers"],
        help="peers: only the side-by-side with Triton and LitServe (make peers first), then "
        "BENCHMARKS.md from the results on disk",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the server")
    p.add_argument("--no-grid", action="store_true", help="skip the backend x batching x mode grid")
    p.add_argument("--concurrency", type=int, help="closed-loop clients (default 16, quick 8)")
    p.add_argument("--requests", type=int, help="requests per configuration (default 2000, quick 150)")
    p.add_argument("--max-seconds", type=float, help="seconds per configuration (default 20, quick 4)")
    return p.parse_args(argv)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}, torch {torch.__version__}"


def reproduce_command(module: str, argv: list[str] | None) -> str:
    """The command line that ran ``module`` with ``argv`` (the process's own when None)."""
    return f"python -m {module} {shlex.join(argv if argv is not None else sys.argv[1:])}".strip()


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "benchmarks",
                "configs",
                ":(exclude)benchmarks/results",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def points_over(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """Per-exit test accuracy of arm ``a`` minus arm ``b``, in points."""
    pairs = zip(a["test_exit_accuracy"], b["test_exit_accuracy"], strict=True)
    return [100 * (x - y) for x, y in pairs]


def full_run_estimate(arms: list[dict[str, Any]]) -> str:
    """Hours the full ablation takes, from the measured images/s of this run's epochs."""
    from benchmarks.ablation import CONFIG
    from training.config import load_config

    cfg = load_config(CONFIG)
    n_train = 50_000 - cfg.data.n_val - cfg.data.n_test  # the CIFAR-10 JPEG training archive
    total = 0.0
    for a in arms:
        log = [json.loads(x) for x in (Path(a["run_dir"]) / "log.jsonl").read_text().splitlines() if x]
        for stage, epochs in (
            ("joint", cfg.epochs),
            ("stage1", cfg.epochs),
            ("stage2", cfg.stage2_epochs),
        ):
            ips = [h["images_per_s"] for h in log if h["stage"] == stage]
            if ips:
                total += epochs * n_train / (sum(ips) / len(ips))
    return (
        f"Full-run estimate from this run's measured images/s: {total / 3600:.1f} h of training for "
        f"the {len(arms)} arms ({cfg.epochs} epochs on {n_train} images; threads and machine load as in "
        "this run), plus evaluation and the serving part."
    )


def findings(arms: list[dict[str, Any]]) -> list[str]:
    """The ablation target, checked on the measured numbers (IMTA Table 1/2 direction:
    every exit better, most at the earliest)."""
    by = {a["arm"]: a for a in arms}
    if "plain" not in by or BEST not in by:
        return []
    d = points_over(by[BEST], by["plain"])
    every = all(v >= 0 for v in d)
    k = len(d)
    core = [a for a in arms if not a.get("follow_up")]  # same epochs and KD weight as the target
    best = [max(core, key=lambda a: a["test_exit_accuracy"][i])["label"] for i in range(k)]
    first = d[0] >= 2.0
    return [
        f"GE + ISC + KD (joint) minus plain, per exit (points): {', '.join(f'{v:+.2f}' for v in d)}.",
        f"Target 'at least as good at every exit': {'met' if every else 'missed'}; "
        f"'+2 points at the first exit': {'met' if first else 'missed'} ({d[0]:+.2f}).",
        "The IMTA paper reports gains at every exit, largest at the earliest ones; here the largest "
        f"gain is at exit {d.index(max(d))} ({max(d):+.2f}) and the smallest at exit "
        f"{d.index(min(d))} ({min(d):+.2f}): "
        + ("the same direction." if every and d[0] >= max(d) else "not the paper's pattern."),
        "Best of the five arms per exit: "
        + "; ".join(f"exit {i}: {b}" for i, b in enumerate(best))
        + ".",
        *follow_up_findings(by, d),
        "Size for comparison (second-hand notes on the paper's tables, ../shared/IMTA.md, not "
        "verified here): CIFAR-100 MSDNet 5 exits, exit 2 63.7 -> 65.5 (+1.8), final 71.8 -> 73.5 "
        "(+1.7); ImageNet exit 1 +0.7, final +1.1, after full-length training (300 epochs on CIFAR).",
    ]


def follow_up_findings(by: dict[str, dict[str, Any]], d10: list[float]) -> list[str]:
    """What the follow-up arms say about the GE + ISC + KD vs plain gap ``d10`` (points per exit)."""

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    out = []
    if "ge_isc_kd_20ep" in by and "plain_20ep" in by:
        d20 = points_over(by["ge_isc_kd_20ep"], by["plain_20ep"])
        trend = "narrows" if mean(d20) > mean(d10) else "does not narrow"
        out.append(
            f"Twice the epochs: GE + ISC + KD minus plain is {', '.join(f'{v:+.2f}' for v in d20)} "
            f"points at 20 epochs (mean {mean(d20):+.2f}) against a mean of {mean(d10):+.2f} at 10: "
            f"the gap {trend} with training length."
        )
    for name, what in (("ge_isc_kd_g009", "KD with the official KL weight (g = 0.09)"),
                       ("isc_kd", "ISC + KD without GE")):  # fmt: skip
        if name in by and "plain" in by:
            d = points_over(by[name], by["plain"])
            out.append(
                f"{what} minus plain: {', '.join(f'{v:+.2f}' for v in d)} points (mean "
                f"{mean(d):+.2f}; GE + ISC + KD at g = 0.5: {mean(d10):+.2f})."
            )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    known = [a.name for a in ARMS]
    unknown = sorted(set(args.arms.split(",")) - set(known))
    if unknown:
        print(f"error: unknown arm(s) {unknown}; known: {known}", file=sys.stderr)
        return 2
    quick = args.quick or args.synthetic
    out = args.out or REPO / "benchmarks" / "results" / ("quick" if quick else "")
    out.mkdir(parents=True, exist_ok=True)
    root = args.runs_root / ("synthetic" if args.synthetic else "quick" if args.quick else "")
    overrides: tuple[str, ...] = (QUICK_TRAIN if quick else ()) + (
        SYNTHETIC_DATA if args.synthetic else ()
    )
    if args.quick and not args.synthetic:
        overrides += ("--set", "data.n_val=500", "--set", "data.n_test=500")
    settings = AblationSettings(root, overrides, args.threads, args.data_dir)
    arms = tuple(a for a in ARMS if a.name in args.arms.split(","))
    if args.report_only:
        return write_report(json.loads((out / "results.json").read_text()), out, args, quick)
    if args.only == "peers":
        from benchmarks.side_by_side import bench_peers

        return bench_peers(args, out, quick)
    t0 = time.time()
    load_at_start = os.getloadavg()[0]  # the cores may be shared (another training run): say so
    try:
        results: dict[str, Any] = {"ablation": run_ablation(settings, arms)}
    except AblationError as e:  # the training CLI has already printed the cause
        print(f"error: {e}", file=sys.stderr)
        return 1
    shipped = REPO / "packages" / "default"
    package = args.serve_package or (shipped if not quick and shipped.is_dir() else None)
    if not args.skip_serving and (package is not None or any(a.name == BEST for a in arms)):
        results["serving"] = serve(root / BEST, out, args, quick, package)
    results["meta"] = {
        "command": reproduce_command("benchmarks", argv),
        "quick": quick,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": commit(),
        "wall_seconds": time.time() - t0,
        "loadavg_1m": [load_at_start, os.getloadavg()[0]],
        "full_command": FULL_COMMAND,
        "ablation_note": ablation_note(quick, args.synthetic),
    }
    return write_report(results, out, args, quick)


def write_report(results: dict[str, Any], out: Path, args: argparse.Namespace, quick: bool) -> int:
    """Findings, ``results.json``, the plots and the markdown, from measured ``results``."""
    from benchmarks.profile import top_frames, top_threads
    from benchmarks.serving_suite import headline

    results["findings"] = findings(results["ablation"])
    results["meta"]["ablation_note"] = ablation_note(quick, args.synthetic)
    if quick:
        results["findings"].append(
            "This is a quick run (1 epoch on a small subset): whether or not a gain shows here, it is "
            "not evidence either way; the full run decides."
        )
    if args.quick and not args.synthetic:
        results["findings"].append(full_run_estimate(results["ablation"]))
    prof = results.get("serving", {}).get("loads", {}).get("profile") or {}
    if prof.get("raw") and (out / prof["raw"]).is_file():  # re-read: --report-only after a change
        prof["top_frames"], prof["threads"] = (
            top_frames(out / prof["raw"]),
            top_threads(out / prof["raw"]),
        )
    if "serving" in results:
        results["serving"]["headline"] = headline(
            results["serving"]["loads"], results["serving"]["grid"]
        )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_ablation(results["ablation"], out / "ablation.png")
    if "serving" in results:
        plot_serving(results["serving"]["loads"], out / "serving.png")
    md = args.markdown or (REPO / "BENCHMARKS.md" if not args.synthetic else out / "BENCHMARKS.md")
    if quick and args.markdown is None and (REPO / "benchmarks" / "results" / "results.json").is_file():
        md = out / "BENCHMARKS.md"  # a quick run never overwrites the published figures
    md.write_text(render(results, out, REPO))
    print(f"wrote {out / 'results.json'}, plots and {md}")
    return 0


def ablation_note(quick: bool, synthetic: bool) -> str:
    data = "synthetic images" if synthetic else "CIFAR-10 JPEGs (`../shared/data`)"
    scale = (
        "1 epoch" + ("" if synthetic else " on 2,000 training images")
        if quick
        else "10 epochs on the 45,000-image train part"
    )
    return (
        f"`configs/ablation/msdnet_small.yaml`: MSDNet 5 exits, step 1, base 2, 12 stem channels, "
        f"growth 6 (1.29M parameters); {data}, {scale}, seed 0, same split for every arm; the "
        "two-stage arm trains stage 1 (GE) for the same epochs, then its ISC + KD heads "
        "(stage2_epochs). KD: T = 3, g = 0.5 (the shipped default's; the official CIFAR default "
        "is g = 0.9 under a KL averaged over the 10 classes too: our g = 0.09 gives its KL term the "
        "official weight, but its CE term 0.91 where the official loss has 0.1). bf16 autocast on "
        "CPU. After the five arms, four follow-ups (`benchmarks/ablation.py`): KD with the "
        "official KL weight, ISC + KD without GE, and plain vs GE + ISC + KD at twice the epochs."
    )


def serve(
    run_dir: Path, out: Path, args: argparse.Namespace, quick: bool, package: Path | None = None
) -> dict[str, Any]:
    """Measure ``package`` (default: the best arm's, exported on first use): HTTP loads with
    labels from the package's own held test part, then the grid."""
    from benchmarks.serving_suite import ServingSettings, headline, run_grid, run_http_loads
    from models.package import read_manifest
    from training.cli import main as training_main

    if package is None:
        package = run_dir / "package"
        if not (package / "manifest.json").is_file():
            code = training_main(
                ["export", "--run-dir", str(run_dir), "--out", str(package), "--name", "ablation-imta"]
            )
            if code != 0:
                raise RuntimeError(f"export of {run_dir} failed with exit code {code}")
    manifest = read_manifest(package)
    if manifest.provenance.training_config is None:
        raise RuntimeError(f"{package} records no training config: its test images are unknown")
    labelled = labelled_test_split(manifest.provenance.training_config, args.data_dir)
    s = ServingSettings(
        concurrency=args.concurrency or (8 if quick else 16),
        requests=args.requests or (150 if quick else 2000),
        max_seconds=args.max_seconds or (4.0 if quick else 20.0),
        grid=not args.no_grid,
    )
    loads = run_http_loads(package, labelled, s, None if args.no_profile else out)
    grid = run_grid(package, s, out / "serving_grid.json", labelled.blobs) if s.grid else []
    served = {"path": _display(package), "name": manifest.name, "exits": manifest.num_exits,
              "default_budget": manifest.default_budget}  # fmt: skip
    return {"package": served, "loads": loads, "grid": grid, "headline": headline(loads, grid)}


def _display(path: Path) -> str:
    """``path`` relative to the repository when inside it (the report is read there)."""
    p = path.resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)
