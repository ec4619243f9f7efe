"""Serving benchmark: images/s and p50/p99 latency of the early-exit service.

Sweeps budgets x concurrency x backend x batching on/off, in-process engine vs through HTTP
(a real uvicorn subprocess). Closed-loop clients, load only to 127.0.0.1, bounded per
configuration by ``--requests`` and ``--max-seconds``. The in-process mode also decodes the same
PNGs, so "engine vs HTTP" isolates the cost of HTTP, FastAPI and uvicorn.

    .venv/bin/python -m benchmarks.serving --help

``make bench`` measures its serving figures here too (:func:`http_loads`, :func:`grid`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.data import Labelled, sample_pngs
from benchmarks.harness.engine import at_precision, make_engine, preprocess, score, submit
from benchmarks.harness.http import Classify
from benchmarks.harness.load import Answer, Tally, closed_loop, open_loop, run
from benchmarks.harness.output import table, write_json
from benchmarks.harness.servers import Server, service_spec
from benchmarks.harness.stats import median_run
from models.package import load_package

WANTED_BUDGETS = (1.0, 0.75, 0.5, 0.25)
ROW = ("requests", "images_per_s", "p50_ms", "p99_ms", "mean_compute_fraction")


@dataclass(frozen=True)
class Settings:
    """What every configuration shares."""

    concurrency: int = 16
    requests: int = 2000
    seconds: float = 20.0
    warmup_requests: int = 32
    threads: int = 1
    max_batch_size: int = 32
    max_delay_ms: float = 0.0
    server_args: tuple[str, ...] = ()


def _log() -> Path:
    return Path(tempfile.gettempdir()) / f"anytime-bench-server-{os.getpid()}.log"


def server_args(s: Settings, batching: bool) -> list[str]:
    """``python -m service`` options for the engine settings ``s`` (a queue no load fills)."""
    return [
        "--batching.max-batch-size", str(s.max_batch_size), "--batching.max-delay-ms",
        str(s.max_delay_ms), "--batching.queue-size", "100000", "--intra-op-threads",
        str(s.threads), "--batching.enabled" if batching else "--no-batching.enabled", *s.server_args,
    ]  # fmt: skip


def engine_load(
    package: Path, backend: str, batching: bool, budget: float, clients: int, s: Settings,
    blobs: list[bytes], start_at: float | None = None, precision: str = "fp32",
) -> dict[str, Any]:  # fmt: skip
    """The in-process engine, one image per request, decoded by the client as a server would;
    the counted load starts at wall-clock ``start_at`` when given (several processes at once);
    ``precision`` int8: the package's int8 graphs and table (``backend`` onnxruntime)."""
    pkg = at_precision(load_package(package), precision)
    engine = make_engine(pkg, backend, threads=s.threads, batch=s.max_batch_size, batching=batching,
                         max_delay_s=s.max_delay_ms / 1e3)  # fmt: skip
    exit_plan, pre = engine.plan(budget), pkg.manifest.preprocessing

    async def send(i: int) -> Answer:
        x = preprocess([blobs[i % len(blobs)]], pre)
        return score(await asyncio.wrap_future(submit(engine, x, exit_plan)))

    try:
        run(closed_loop(send, clients, s.warmup_requests, 30))
        time.sleep(max(0.0, (start_at or 0.0) - time.time()))
        return run(closed_loop(send, clients, s.requests, s.seconds)).summary(labelled=False)
    finally:
        engine.stop()


def http_load(
    url: str, name: str, budget: float, data: Labelled, clients: int, requests: int, seconds: float,
    rate: float | None = None,
) -> Tally:  # fmt: skip
    """Closed loop of ``clients`` clients, or open loop at ``rate`` requests/s."""
    send = Classify(url, name, budget, data.blobs, data.labels)

    async def load() -> Tally:
        try:
            if rate is None:
                return await closed_loop(send, clients, requests, seconds)
            return await open_loop(send, rate, requests, seconds)
        finally:
            await send.close()

    return run(load())


def grid(
    package: Path, s: Settings, budgets: list[float], concurrency: list[int], modes: list[str],
    backends: list[str], batching: list[bool], blobs: list[bytes], repeat: int = 1,
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows ``mode, backend, batching, budget, concurrency`` + images/s, latency, compute: each
    configuration ``repeat`` times, the median run kept."""
    name, rows = load_package(package).manifest.name, []
    data = Labelled(blobs, [])

    def show(row: dict[str, Any]) -> None:
        rows.append(row)
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values())
              + " |", flush=True)  # fmt: skip

    for backend in backends:
        for on in batching:
            key = {"backend": backend, "batching": "on" if on else "off"}
            configs = [(b, c) for b in budgets for c in concurrency]
            for b, c in configs if "engine" in modes else ():
                runs = [engine_load(package, backend, on, b, c, s, blobs) for _ in range(repeat)]
                show({"mode": "engine", **key, "budget": b, "concurrency": c} | _row(median_run(runs)))
            if "http" not in modes:
                continue
            spec = service_spec(package, backend, server_args(s, on))
            with Server(spec, _log()) as server:
                for b, c in configs:
                    http_load(server.url, name, b, data, c, s.warmup_requests, 30)
                    runs = [
                        http_load(server.url, name, b, data, c, s.requests, s.seconds).summary(False)
                        for _ in range(repeat)
                    ]
                    show({"mode": "http", **key, "budget": b, "concurrency": c} | _row(median_run(runs)))
    return rows


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ROW}


def served_budgets(manifest: Any) -> list[float]:
    """The wanted budgets (and the default) the package's table can serve: a row at or below each."""
    lowest = min(manifest.budget_values, default=1.0)
    wanted = set(WANTED_BUDGETS) | ({manifest.default_budget} if manifest.default_budget else set())
    return sorted((b for b in wanted if b >= lowest - 1e-9), reverse=True)


def http_loads(package: Path, data: Labelled, s: Settings) -> dict[str, Any]:
    """HTTP with labelled images: a closed loop per served budget, then an open loop at half of
    each budget's closed-loop throughput."""
    m = load_package(package).manifest
    budgets, closed, opened = served_budgets(m), [], []
    spec = service_spec(package, "torch", server_args(s, True))
    with Server(spec, _log()) as server:
        http_load(server.url, m.name, 1.0, data, s.concurrency, 4 * s.concurrency, 30)  # warm-up
        for b in budgets:
            t = http_load(server.url, m.name, b, data, s.concurrency, s.requests, s.seconds)
            closed.append(_load_row("closed", b, s.concurrency, None, t))
            print(f"closed loop budget {b}: {t.summary()['images_per_s']:.1f} img/s", flush=True)
        for r in closed:
            rate = r["images_per_s"] / 2
            t = http_load(server.url, m.name, r["budget"], data, 0, s.requests, s.seconds, rate)
            opened.append(_load_row("open", r["budget"], t.peak, rate, t))
            print(f"open loop budget {r['budget']} at {rate:.1f}/s: p99 {opened[-1]['p99_ms']:.1f} ms")
    return {"budgets": budgets, "default_budget": m.default_budget, "closed_loop": closed,
            "open_loop": opened, "images": len(data.blobs)}  # fmt: skip


def _load_row(loop: str, budget: float, conc: int, rate: float | None, t: Tally) -> dict[str, Any]:
    keep = ("requests", "errors", "error_kinds", "images_per_s", "p50_ms", "p95_ms", "p99_ms",
            "accuracy", "mean_compute_fraction")  # fmt: skip
    summary = t.summary()
    return {"loop": loop, "budget": budget, "concurrency": conc, "offered_rate": rate} | {
        k: summary[k] for k in keep
    }


def headline(loads: dict[str, Any], grid_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The three serving targets, computed from the measured rows."""
    closed = {r["budget"]: r for r in loads["closed_loop"]}
    out: dict[str, Any] = {}
    if missing := sorted(set(WANTED_BUDGETS) - set(closed)):
        # Calibration only writes rows it can reach: a budget below the first exit's own cost
        # (every image pays at least stage 0) has no thresholds.
        out["budgets_not_served"] = (
            f"{missing}: the package's budget table has no row at or below them (calibration writes "
            "only the budgets it can reach; every image pays at least the first exit)."
        )
    if full := closed.get(1.0):
        # The fastest budget (HTTP images/s) within 0.5 point of the full model's accuracy.
        ok = [r for r in closed.values() if r["accuracy"] >= full["accuracy"] - 0.005]
        best = max(ok, key=lambda r: r["images_per_s"])
        out["speedup_within_half_point"] = {
            "budget": best["budget"],
            "throughput_ratio": best["images_per_s"] / full["images_per_s"],
            "accuracy_delta_points": 100 * (best["accuracy"] - full["accuracy"]),
            "target": ">= 2.0",
        }
    if opened := [r for r in loads["open_loop"] if r["requests"]]:
        ratios = {str(r["budget"]): r["p99_ms"] / r["p50_ms"] for r in opened}
        out["p99_over_p50_at_half_load"] = ratios | {"target": "< 3"}
    engine = {(r["backend"], r["batching"], r["budget"]): r for r in grid_rows if r["mode"] == "engine"}
    pairs = {
        f"{r['backend']}/batching {r['batching']}/budget {r['budget']}": r["images_per_s"]
        / engine[k]["images_per_s"]
        for r in grid_rows
        if r["mode"] == "http" and (k := (r["backend"], r["batching"], r["budget"])) in engine
    }
    if pairs:
        out["http_over_engine"] = pairs | {"target": ">= 0.8"}
    return out


def main(argv: list[str] | None = None) -> int:
    p = suite_parser("benchmarks.serving", __doc__, data=False)
    p.add_argument("--modes", default="engine,http", help="engine,http")
    p.add_argument("--backends", default="torch,onnxruntime", help="torch,onnxruntime")
    p.add_argument("--batching", default="on,off", help="on,off")
    p.add_argument("--budgets", default="0.5,1.0", help="budgets (rows of the package's budget table)")
    p.add_argument("--concurrency", default="1,8,32", help="closed-loop clients")
    p.add_argument("--requests", type=int, default=400, help="requests per configuration (upper bound)")
    p.add_argument("--max-seconds", type=float, default=15.0, help="seconds per configuration (bound)")
    p.add_argument("--warmup-requests", type=int, default=20)
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration; the median is shown")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = library default)")
    p.add_argument("--server-args", default="", help="extra `python -m service` options (http mode)")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    a = p.parse_args(argv)
    s = Settings(requests=a.requests, seconds=a.max_seconds, warmup_requests=a.warmup_requests,
                 threads=a.threads, max_batch_size=a.max_batch_size, max_delay_ms=a.max_delay_ms,
                 server_args=tuple(a.server_args.split()))  # fmt: skip
    budgets = [float(b) for b in a.budgets.split(",")]
    print(f"package {load_package(a.package).manifest.name}")
    print("\n".join(table(("mode", "backend", "batching", "budget", "clients", *ROW), [])))
    rows = grid(a.package, s, budgets, [int(c) for c in a.concurrency.split(",")],
                a.modes.split(","), a.backends.split(","), [b == "on" for b in a.batching.split(",")],
                sample_pngs(64, seed=1), a.repeat)  # fmt: skip
    if a.json:
        write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
