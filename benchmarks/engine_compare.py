"""``--compare`` of ``benchmarks.engine_speed``: the same rows on two checkouts, alternated.

The children run ``engine_speed.py`` of this checkout inside the other one (its root first on
``sys.path``), so the engine measured is the other one's and the load the same; before and after
share one sitting of a shared machine, and the ratio of the medians is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SPEED = Path(__file__).resolve().with_name("engine_speed.py")
_RUN_FILE = "import runpy, sys; sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"


def compare(args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Alternate child runs on ``args.compare`` (before) and this checkout (after)."""
    here = Path(__file__).resolve().parents[1]
    child = list(argv)
    i = child.index("--compare")
    del child[i : i + 2]
    for j, a in enumerate(child[:-1]):  # the children run in the other tree: absolute paths
        if a in ("--images-npz", "--package", "--data-dir"):
            child[j + 1] = str(Path(child[j + 1]).resolve())
    runs: dict[str, list[list[dict[str, Any]]]] = {"before": [], "after": []}
    for _ in range(args.repeat):
        for label, tree in (("before", Path(args.compare).resolve()), ("after", here)):
            env = {**os.environ, "PYTHONPATH": str(tree)}
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                # Run by path but with the tree's root first on sys.path (not benchmarks/, whose
                # profile.py would shadow the standard library's).
                cmd = [sys.executable, "-c", _RUN_FILE, str(SPEED), *child,
                       "--json", out.name]  # fmt: skip
                subprocess.run(cmd, cwd=tree, env=env, check=True)
                runs[label].append(json.loads(Path(out.name).read_text()))
    rows = []
    for j, row in enumerate(runs["after"][0]):
        key = {k: row.get(k) for k in ("mode", "budget", "request_images", "dtype", "clients_kind")}
        summary: dict[str, Any] = dict(key, backend=row["backend"])
        for label in ("before", "after"):
            ips = [r[j]["images_per_s"] for r in runs[label]]
            summary[f"{label}_images_per_s"] = [round(v, 1) for v in ips]
            for cost in ("cpu_us_per_image", "engine_cpu_us_per_image"):
                summary[f"{label}_{cost}"] = round(statistics.median(r[j][cost] for r in runs[label]), 1)
            summary[f"{label}_accuracy"] = runs[label][0][j]["accuracy"]
            summary[f"{label}_mean_compute_fraction"] = runs[label][0][j]["mean_compute_fraction"]
        summary["speedup"] = statistics.median(summary["after_images_per_s"]) / statistics.median(
            summary["before_images_per_s"]
        )
        for label in ("before", "after"):
            # Within each run: this row's images/s over the same row at budget 1.0.
            ref = next(
                (
                    i
                    for i, r in enumerate(runs["after"][0])
                    if r["budget"] == 1.0 and all(r[k] == row[k] for k in key if k != "budget")
                ),
                None,
            )
            if ref is not None and ref != j:
                summary[f"{label}_vs_budget_1"] = [
                    round(r[j]["images_per_s"] / r[ref]["images_per_s"], 3) for r in runs[label]
                ]
        rows.append(summary)
        print(json.dumps(summary), flush=True)
    return rows
