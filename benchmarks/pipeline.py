"""``python -m benchmarks`` (``make bench``): the IMTA ablation, then the serving figures, then
``BENCHMARKS.md``. Resumable: every ablation arm is a training run directory under ``--runs-root``.

    .venv/bin/python -m benchmarks --quick        # minutes: smoke run, not evidence
    .venv/bin/python -m benchmarks                # the published figures (hours on a 2-core CPU)
    .venv/bin/python -m benchmarks --only peers   # Triton and LitServe side by side (make peers)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import ablation, profile, serving, side_by_side
from benchmarks.harness.data import labelled_test_split
from benchmarks.harness.output import write_json
from benchmarks.harness.provenance import REPO, RESULTS, Sitting, display
from benchmarks.report import plot_ablation, plot_serving, render
from models.package import read_manifest
from training.cli import main as training_main

FULL_COMMAND = (
    "make bench  # = .venv/bin/python -m benchmarks --runs-root runs/ablation; "
    "rerunning resumes every arm from <runs-root>/<arm>/last.pt"
)
QUICK_TRAIN = ("--epochs", "1", "--set", "stage2_epochs=1", "--set", "data.limit_train=2000")
QUICK_DATA = ("--set", "data.n_val=500", "--set", "data.n_test=500")
SYNTHETIC_DATA = (
    "--set", "data.source=synthetic", "--set", "data.synthetic_size=360",
    "--set", "data.n_val=80", "--set", "data.n_test=80", "--set", "batch_size=32",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--quick", action="store_true", help="1 epoch on 2,000 images, short loads")
    add("--synthetic", action="store_true", help="synthetic images (tests; no ../shared)")
    add("--runs-root", type=Path, default=REPO / "runs" / "ablation", help="parent of the arms' runs")
    add("--data-dir", help="CIFAR-10 JPEG archive or tree (default: the config's)")
    add("--out", type=Path, help="results folder (default benchmarks/results; quick: runs/bench-quick)")
    add(
        "--markdown",
        type=Path,
        help="markdown to regenerate (default BENCHMARKS.md; a quick run's goes into its --out)",
    )
    add("--threads", type=int, help="torch threads for training (default: the config's 2)")
    add("--arms", default=",".join(a.name for a in ablation.ARMS), help="ablation arms to run")
    add("--report-only", action="store_true", help="plots and markdown again from results.json")
    add("--skip-serving", action="store_true", help="ablation only")
    add(
        "--serve-package",
        type=Path,
        help="package for the serving figures (default packages/default in a full run; the "
        "GE + ISC + KD arm's own package in --quick / --synthetic runs)",
    )
    add(
        "--only",
        choices=["peers"],
        help="peers: only the side-by-side with Triton and LitServe (make peers first), then "
        "BENCHMARKS.md from the results on disk",
    )
    add("--no-profile", action="store_true", help="skip the py-spy profile of the server")
    add("--no-grid", action="store_true", help="skip the backend x batching x mode grid")
    add("--concurrency", type=int, help="closed-loop clients (default 16, quick 8)")
    add("--requests", type=int, help="requests per configuration (default 2000, quick 150)")
    add("--max-seconds", type=float, help="seconds per configuration (default 20, quick 4)")
    return p.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    known = [a.name for a in ablation.ARMS]
    if unknown := sorted(set(args.arms.split(",")) - set(known)):
        print(f"error: unknown arm(s) {unknown}; known: {known}", file=sys.stderr)
        return 2
    quick = args.quick or args.synthetic
    out = args.out or (REPO / "runs" / "bench-quick" if quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return write_report(json.loads((out / "results.json").read_text()), out, args, quick)
    if args.only == "peers":
        return bench_peers(args, out, quick)
    sitting = Sitting("benchmarks", argv)
    root = args.runs_root / ("synthetic" if args.synthetic else "quick" if args.quick else "")
    overrides = (QUICK_TRAIN if quick else ()) + (SYNTHETIC_DATA if args.synthetic else ())
    overrides += QUICK_DATA if args.quick and not args.synthetic else ()
    arms = tuple(a for a in ablation.ARMS if a.name in args.arms.split(","))
    try:
        s = ablation.AblationSettings(root, overrides, args.threads, args.data_dir)
        results: dict[str, Any] = {"ablation": ablation.run_ablation(s, arms)}
    except ablation.AblationError as e:  # the training CLI has already printed the cause
        print(f"error: {e}", file=sys.stderr)
        return 1
    shipped = REPO / "packages" / "default"
    package = args.serve_package or (shipped if not quick and shipped.is_dir() else None)
    if not args.skip_serving and (package is not None or any(a.name == ablation.BEST for a in arms)):
        results["serving"] = serve(package or arm_package(root / ablation.BEST), out, args, quick)
    results["meta"] = sitting.meta(quick=quick, full_command=FULL_COMMAND)
    return write_report(results, out, args, quick)


def arm_package(run_dir: Path) -> Path:
    """The package of an ablation arm, exported on first use."""
    package = run_dir / "package"
    if not (package / "manifest.json").is_file():
        argv = ["export", "--run-dir", str(run_dir), "--out", str(package), "--name", "ablation-imta"]
        if (code := training_main(argv)) != 0:
            raise RuntimeError(f"export of {run_dir} failed with exit code {code}")
    return package


def serve(package: Path, out: Path, args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    """HTTP loads with labels from the package's own held test part, then the grid."""
    manifest = read_manifest(package)
    if manifest.provenance.training_config is None:
        raise RuntimeError(f"{package} records no training config: its test images are unknown")
    data = labelled_test_split(manifest.provenance.training_config, args.data_dir)
    conc = args.concurrency or (8 if quick else 16)
    requests, seconds = (
        args.requests or (150 if quick else 2000),
        args.max_seconds or (4.0 if quick else 20.0),
    )
    s = serving.Settings(concurrency=conc, requests=requests, seconds=seconds, warmup_requests=2 * conc)
    loads = serving.http_loads(package, data, s, None if args.no_profile else out)
    grid = []
    if not args.no_grid:
        budgets = sorted({1.0, manifest.default_budget or min(loads["budgets"])})
        grid = serving.grid(package, s, budgets, [s.concurrency], ["engine", "http"],
                            ["torch", "onnxruntime"], [True, False], data.blobs)  # fmt: skip
    served = {"path": display(package), "name": manifest.name, "exits": manifest.num_exits,
              "default_budget": manifest.default_budget}  # fmt: skip
    return {"package": served, "loads": loads, "grid": grid, "headline": serving.headline(loads, grid)}


def write_report(results: dict[str, Any], out: Path, args: argparse.Namespace, quick: bool) -> int:
    """Findings, ``results.json``, the plots and the markdown, from measured ``results``."""
    results["findings"] = ablation.findings(results["ablation"])
    results["meta"]["ablation_note"] = ablation.note(quick, args.synthetic)
    if quick:
        results["findings"].append(
            "This is a quick run (1 epoch on a small subset): whether or not a gain shows here, it is "
            "not evidence either way; the full run decides."
        )
    prof = results.get("serving", {}).get("loads", {}).get("profile") or {}
    if prof.get("raw") and (out / prof["raw"]).is_file():  # re-read: --report-only after a change
        prof["top_frames"], prof["threads"] = (
            profile.top_frames(out / prof["raw"]),
            profile.top_threads(out / prof["raw"]),
        )
    if "serving" in results:
        results["serving"]["headline"] = serving.headline(
            results["serving"]["loads"], results["serving"]["grid"]
        )
    write_json(out / "results.json", results)
    plot_ablation(results["ablation"], out / "ablation.png")
    if "serving" in results:
        plot_serving(results["serving"]["loads"], out / "serving.png")
    md = args.markdown or (out / "BENCHMARKS.md" if quick else REPO / "BENCHMARKS.md")
    md.write_text(render(results, out))
    print(f"wrote {out / 'results.json'}, plots and {md}")
    return 0


def bench_peers(args: argparse.Namespace, out: Path, quick: bool) -> int:
    """The side-by-side run and the request-cost profile into ``out``, then ``BENCHMARKS.md``
    rendered anew from ``out/results.json`` (the other sections' figures stay as measured)."""
    common = (["--data-dir", args.data_dir] if args.data_dir else []) + (
        ["--package", str(args.serve_package)] if args.serve_package else []
    )
    seconds = args.max_seconds or (2.0 if quick else 5.0)
    code = side_by_side.main([*common, "--out", str(out / "peers.json"), "--seconds", str(seconds),
                              "--repeats", "1" if quick else "3"])  # fmt: skip
    if code == 0 and not args.no_profile:
        prof_out = str(out / "profile_components.json")
        code = profile.main([*common, "--out", prof_out, "--seconds", str(2 * seconds)])
    if code == 0 and (out / "results.json").is_file():
        md = args.markdown or (
            REPO / "BENCHMARKS.md" if out.resolve() == RESULTS else out / "BENCHMARKS.md"
        )
        md.write_text(render(json.loads((out / "results.json").read_text()), out))
        print(f"wrote {md}")
    return code
