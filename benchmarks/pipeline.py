"""``python -m benchmarks`` (``make bench``): the serving figures of a package, then
``BENCHMARKS.md``; ``--only peers`` (``make bench-peers``): the side by side with Triton and
LitServe and the request-cost profile, then ``BENCHMARKS.md``.

    .venv/bin/python -m benchmarks --quick        # minutes: short loads, not evidence
    .venv/bin/python -m benchmarks                # the published serving figures
    .venv/bin/python -m benchmarks --only peers   # Triton and LitServe side by side (make peers)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from benchmarks import profile, serving, side_by_side
from benchmarks.harness.cli import suite_parser
from benchmarks.harness.data import labelled_test_split
from benchmarks.harness.output import write_json
from benchmarks.harness.provenance import REPO, RESULTS, Sitting, display
from benchmarks.report import plot_serving, render
from models.package import read_manifest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = suite_parser("benchmarks", __doc__)
    add = p.add_argument
    add("--quick", action="store_true", help="short loads; results and markdown go to runs/bench-quick")
    add("--out", type=Path, help="results folder (default benchmarks/results; quick: runs/bench-quick)")
    add("--markdown", type=Path, help="markdown to write (default BENCHMARKS.md; quick: in --out)")
    add("--report-only", action="store_true", help="plot and markdown again from results.json")
    add("--only", choices=["peers"], help="peers: only the side by side (make peers first)")
    add(
        "--precision",
        choices=["auto", "fp32", "int8"],
        default=os.environ.get("ANYTIME_PRECISION", "auto"),
        help="--only peers: auto = the service at make serve's defaults, or what the service and "
        "the peers run (default $ANYTIME_PRECISION, else auto)",
    )
    add("--no-profile", action="store_true", help="--only peers: skip the request-cost profile (auto)")
    add("--no-grid", action="store_true", help="skip the backend x batching x mode grid")
    add("--concurrency", type=int, help="closed-loop clients (default 16, quick 8)")
    add("--requests", type=int, help="requests per configuration (default 2000, quick 150)")
    add("--max-seconds", type=float, help="seconds per configuration (default 20, quick 4)")
    return p.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or (REPO / "runs" / "bench-quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "peers":
        return bench_peers(args, out)
    if args.report_only:
        return write_report(json.loads((out / "results.json").read_text()), out, args)
    sitting = Sitting("benchmarks", argv)
    results = {"serving": serve(args.package, args), "meta": sitting.meta(quick=args.quick)}
    return write_report(results, out, args)


def serve(package: Path, args: argparse.Namespace) -> dict[str, Any]:
    """HTTP loads with labels from the package's own held test part, then the grid."""
    manifest = read_manifest(package)
    if manifest.provenance.training_config is None:
        raise SystemExit(f"error: {package} records no training config: its test images are unknown")
    data = labelled_test_split(manifest.provenance.training_config, args.data_dir)
    conc = args.concurrency or (8 if args.quick else 16)
    requests = args.requests or (150 if args.quick else 2000)
    seconds = args.max_seconds or (4.0 if args.quick else 20.0)
    s = serving.Settings(concurrency=conc, requests=requests, seconds=seconds, warmup_requests=2 * conc)
    loads = serving.http_loads(package, data, s)
    grid = []
    if not args.no_grid:
        budgets = sorted({1.0, manifest.default_budget or min(loads["budgets"])})
        grid = serving.grid(package, s, budgets, [s.concurrency], ["engine", "http"],
                            ["torch", "onnxruntime"], [True, False], data.blobs)  # fmt: skip
    served = {"path": display(package), "name": manifest.name, "exits": manifest.num_exits,
              "default_budget": manifest.default_budget}  # fmt: skip
    return {"package": served, "loads": loads, "grid": grid, "headline": serving.headline(loads, grid)}


def markdown_path(args: argparse.Namespace, out: Path) -> Path:
    """Where the page goes: ``--markdown``, else BENCHMARKS.md for the published results folder."""
    return args.markdown or (
        REPO / "BENCHMARKS.md" if out.resolve() == RESULTS else out / "BENCHMARKS.md"
    )


def write_report(results: dict[str, Any], out: Path, args: argparse.Namespace) -> int:
    """``results.json``, the plot and the markdown, from measured ``results``."""
    results["serving"]["headline"] = serving.headline(
        results["serving"]["loads"], results["serving"]["grid"]
    )
    write_json(out / "results.json", results)
    plot_serving(results["serving"]["loads"], out / "serving.png")
    (md := markdown_path(args, out)).write_text(render(results, out))
    print(f"wrote {out / 'results.json'}, {out / 'serving.png'} and {md}")
    return 0


def bench_peers(args: argparse.Namespace, out: Path) -> int:
    """The side-by-side run and the request-cost profile into ``out``, then ``BENCHMARKS.md``
    rendered anew from ``out/results.json`` (the serving figures stay as measured)."""
    common = ["--package", str(args.package)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    seconds = args.max_seconds or (2.0 if args.quick else 5.0)
    peers = str(out / side_by_side.PEER_FILES[args.precision])
    code = side_by_side.main([*common, "--out", peers, "--seconds", str(seconds),
                              "--repeats", "1" if args.quick else "3",
                              "--precision", args.precision])  # fmt: skip
    if code == 0 and not args.no_profile and args.precision == "auto":  # the headline's profile
        prof_out = str(out / "profile_components.json")
        code = profile.main([*common, "--out", prof_out, "--seconds", str(2 * seconds)])
    if code == 0 and (out / "results.json").is_file():
        (md := markdown_path(args, out)).write_text(
            render(json.loads((out / "results.json").read_text()), out)
        )
        print(f"wrote {md}")
    return code
