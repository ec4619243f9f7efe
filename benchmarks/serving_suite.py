"""The serving half of ``python -m benchmarks``: one package, one machine, one run.

1. HTTP, closed loop at fixed concurrency, real labelled test images: throughput, latency,
   accuracy and mean compute fraction for budgets 1.0 / 0.75 / 0.5 / 0.25 / the default.
2. HTTP, open loop (Poisson arrivals) at half of each budget's closed-loop throughput: the
   latency a moderately loaded server gives (target: p99 < 3x p50).
3. The grid of :mod:`benchmarks.serving`: torch vs ONNX Runtime, batching (per-exit shrinking)
   on vs off, in-process engine vs HTTP, at budgets 1.0 and the default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import serving
from benchmarks.loadgen import Labelled, closed_loop, open_loop
from benchmarks.profile import start_profile, top_frames, top_threads
from models.package import load_package

WANTED_BUDGETS = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class ServingSettings:
    concurrency: int = 16
    requests: int = 2000
    max_seconds: float = 20.0
    threads: int = 1
    max_batch_size: int = 32
    grid: bool = True  # run the backend x batching x mode grid of benchmarks.serving


def served_budgets(package: Path) -> tuple[list[float], float | None]:
    """The wanted budgets the package's table can serve (a row at or below each), and its default."""
    m = load_package(package).manifest
    lowest = min(m.budget_values, default=1.0)
    wanted = set(WANTED_BUDGETS) | ({m.default_budget} if m.default_budget else set())
    return sorted((b for b in wanted if b >= lowest - 1e-9), reverse=True), m.default_budget


def _server_args(s: ServingSettings) -> argparse.Namespace:
    return argparse.Namespace(
        max_batch_size=s.max_batch_size, max_delay_ms=0.0, threads=s.threads, server_args=""
    )


def run_http_loads(
    package: Path, data: Labelled, s: ServingSettings, profile_dir: Path | None = None
) -> dict[str, Any]:
    """Closed loop per budget, then open loop at half of each budget's closed-loop throughput;
    with ``profile_dir``, a last closed loop at budget 1.0 under py-spy (:mod:`benchmarks.profile`)."""
    budgets, default = served_budgets(package)
    name = load_package(package).manifest.name
    server = serving.HttpServer(package, "torch", True, _server_args(s))
    closed, opened = [], []
    profile: dict[str, Any] | None = None
    try:
        warm = closed_loop(server.url, name, 1.0, data, s.concurrency, 4 * s.concurrency, 30)
        asyncio.run(warm)
        for b in budgets:
            r = asyncio.run(
                closed_loop(server.url, name, b, data, s.concurrency, s.requests, s.max_seconds)
            )
            print(
                f"closed loop budget {b}: {r.images_per_s:.1f} img/s, acc {r.accuracy:.4f}", flush=True
            )
            closed.append(r)
        for r in closed:
            rate = r.images_per_s / 2
            o = asyncio.run(open_loop(server.url, name, r.budget, data, rate, s.requests, s.max_seconds))
            print(f"open loop budget {r.budget} at {rate:.1f}/s: p50 {o.p50_ms:.1f} p99 {o.p99_ms:.1f}")
            opened.append(o)
        if profile_dir is not None:
            profile = profile_server(server, name, data, s, profile_dir)
    finally:
        server.close()
    return {
        "budgets": budgets,
        "default_budget": default,
        "closed_loop": [asdict(r) for r in closed],
        "open_loop": [asdict(r) for r in opened],
        "images": len(data.blobs),
        "profile": profile,
    }


def profile_server(
    server: serving.HttpServer, name: str, data: Labelled, s: ServingSettings, out: Path
) -> dict[str, Any] | None:
    """py-spy on the server during a closed loop at budget 1.0 (saturation); top frames/threads."""
    seconds = min(s.max_seconds, 10.0)
    raw = out / "profile_http_raw.txt"
    proc = start_profile(server.proc.pid, seconds, raw)
    if proc is None:
        return None
    load = closed_loop(server.url, name, 1.0, data, s.concurrency, 10**6, seconds)
    r = asyncio.run(load)
    _, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0 or not raw.is_file():
        return {"error": f"py-spy exited {proc.returncode}: {err.decode(errors='replace')[-300:]}"}
    return {
        "seconds": seconds,
        "budget": 1.0,
        "images_per_s": r.images_per_s,
        "raw": raw.name,
        "top_frames": top_frames(raw),
        "threads": top_threads(raw),
    }


def run_grid(
    package: Path, s: ServingSettings, out_json: Path, blobs: list[bytes] | None = None
) -> list[dict[str, Any]]:
    """``benchmarks.serving`` on ``package``: backends x batching x {engine, http}, sending
    ``blobs`` (the labelled test images, so exits match the labelled run) when given."""
    budgets, default = served_budgets(package)
    grid_budgets = sorted({1.0, default or min(budgets)})
    argv = [
        "--package", str(package), "--budgets", ",".join(map(str, grid_budgets)),
        "--concurrency", str(s.concurrency), "--requests", str(s.requests),
        "--max-seconds", str(s.max_seconds), "--threads", str(s.threads),
        "--max-batch-size", str(s.max_batch_size), "--warmup-requests", str(2 * s.concurrency),
        "--json", str(out_json),
    ]  # fmt: skip
    serving.main(argv, blobs)
    rows: list[dict[str, Any]] = json.loads(out_json.read_text())
    return rows


def headline(loads: dict[str, Any], grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The three serving targets, computed from the measured rows."""
    closed = {r["budget"]: r for r in loads["closed_loop"]}
    full = closed.get(1.0)
    out: dict[str, Any] = {}
    missing = sorted(set(WANTED_BUDGETS) - set(closed))
    if missing:
        # Calibration only writes rows it can reach: a budget below the first exit's own cost
        # (every image pays at least stage 0) has no thresholds.
        out["budgets_not_served"] = (
            f"{missing}: the package's budget table has no row at or below them (calibration writes "
            "only the budgets it can reach; every image pays at least the first exit)."
        )
    if full:
        # The fastest budget (HTTP images/s) whose accuracy is within 0.5 point of the full
        # model's (the first serving target).
        ok = [r for r in closed.values() if r["accuracy"] >= full["accuracy"] - 0.005]
        best = max(ok, key=lambda r: r["images_per_s"])
        out["speedup_within_half_point"] = {
            "budget": best["budget"],
            "throughput_ratio": best["images_per_s"] / full["images_per_s"],
            "accuracy_delta_points": 100 * (best["accuracy"] - full["accuracy"]),
            "target": ">= 2.0",
        }
    opened = [r for r in loads["open_loop"] if r["requests"]]
    if opened:
        out["p99_over_p50_at_half_load"] = {
            str(r["budget"]): r["p99_ms"] / r["p50_ms"] for r in opened
        } | {"target": "< 3"}
    pairs = {}
    for r in grid:
        if r["mode"] == "http":
            eng = [
                e
                for e in grid
                if e["mode"] == "engine"
                and (e["backend"], e["batching"], e["budget"])
                == (r["backend"], r["batching"], r["budget"])
            ]
            if eng:
                key = f"{r['backend']}/batching {r['batching']}/budget {r['budget']}"
                pairs[key] = r["images_per_s"] / eng[0]["images_per_s"]
    if pairs:
        out["http_over_engine"] = pairs | {"target": ">= 0.8"}
    return out
