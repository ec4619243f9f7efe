"""Serving benchmark: images/s and p50/p99 latency of the early-exit service.

Sweeps budgets x concurrency x backend x batching on/off, in-process engine vs through HTTP
(a real uvicorn subprocess). Closed-loop clients, load only to 127.0.0.1, bounded per
configuration by ``--requests`` and ``--max-seconds``. The in-process mode also decodes the same
PNGs, so "engine vs HTTP" isolates the cost of HTTP, FastAPI and uvicorn.

Without ``--package`` it exports an untrained package of ``--arch`` whose budget table is
"calibrated" on the benchmark images (confidence quantiles), so budgets below 1 really exit
early: throughput and latency are real, accuracy is meaningless.

    .venv/bin/python -m benchmarks.serving --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import httpx
import torch

from benchmarks.http_client import Connection, HttpError
from benchmarks.workload import calibrated_package, sample_pngs
from models.package import ModelPackage, load_package
from service.engine import EngineConfig, build_engine
from service.images import ImageLimits, images_to_batch
from service.policy import resolve_plan

Send = Callable[[bytes], Awaitable[list[float]]]
"""One request: image bytes -> compute fraction of each answered image."""
Measured = tuple[list[float], list[float], float]
"""(request latencies in s, per-image compute fractions, elapsed s)."""

LIMITS = ImageLimits(max_image_bytes=8 * 2**20, max_image_pixels=40_000_000)


@dataclass
class Result:
    mode: str
    backend: str
    batching: str
    budget: float
    concurrency: int
    requests: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    mean_compute_fraction: float


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def closed_loop(
    send: Send, blobs: list[bytes], concurrency: int, requests: int, seconds: float
) -> Measured:
    """``concurrency`` clients, each sending its next request when the last is answered."""
    latencies: list[float] = []
    fractions: list[float] = []
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            i = next(counter)
            if i >= requests:
                return
            t0 = time.perf_counter()
            fractions.extend(await send(blobs[i % len(blobs)]))
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, fractions, time.perf_counter() - t0


def summarise(
    mode: str, backend: str, batching: bool, budget: float, conc: int, out: Measured
) -> Result:
    latencies, fractions, elapsed = out
    return Result(
        mode,
        backend,
        "on" if batching else "off",
        budget,
        conc,
        len(latencies),
        len(fractions) / elapsed,
        1e3 * statistics.median(latencies),
        1e3 * percentile(latencies, 0.99),
        sum(fractions) / len(fractions),
    )


def run_engine(
    pkg: ModelPackage, backend: str, batching: bool, budget: float, conc: int, args: argparse.Namespace
) -> Result:
    cfg = EngineConfig(
        max_batch_size=args.max_batch_size,
        max_delay_s=args.max_delay_ms / 1e3,
        queue_size=10**6,
        batching=batching,
        intra_op_threads=args.threads,
    )
    engine = build_engine(pkg, backend, cfg, threads=args.threads)
    plan = resolve_plan(pkg.manifest, budget=budget)
    pre = pkg.manifest.preprocessing

    async def send(blob: bytes) -> list[float]:
        x = images_to_batch([blob], pre, LIMITS)
        work = engine.submit(x, plan, time.monotonic() + 60)
        return [r.compute_fraction for r in await asyncio.wrap_future(work.future)]

    blobs = args.blobs or sample_pngs(64, seed=1)
    try:
        asyncio.run(closed_loop(send, blobs, conc, args.warmup_requests, 30))
        start_at = getattr(args, "start_at", None)  # several engine processes start together
        if start_at is not None:
            time.sleep(max(0.0, start_at - time.time()))
        out = asyncio.run(closed_loop(send, blobs, conc, args.requests, args.max_seconds))
    finally:
        engine.stop()
    return summarise("engine", backend, batching, budget, conc, out)


class HttpServer:
    """``python -m service`` on a free port of 127.0.0.1, for one backend + batching setting."""

    def __init__(self, package: Path, backend: str, batching: bool, args: argparse.Namespace) -> None:
        cmd = [
            sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
            "--backend", backend, "--log-level", "warning",
            "--batching.max-batch-size", str(args.max_batch_size),
            "--batching.max-delay-ms", str(args.max_delay_ms),
            "--batching.queue-size", "100000", "--intra-op-threads", str(args.threads),
            "--batching.enabled" if batching else "--no-batching.enabled",
            *args.server_args.split(),
        ]  # fmt: skip
        env = {**os.environ, "ANYTIME_MODELS": json.dumps([str(package)])}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = "http://" + line.split("http://", 1)[1].split()[0]
        for _ in range(1200):
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server not ready")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def run_http(
    server: HttpServer,
    name: str,
    backend: str,
    batching: bool,
    budget: float,
    conc: int,
    args: argparse.Namespace,
) -> Result:
    url = f"/v1/models/{name}/classify"
    blobs = args.blobs or sample_pngs(64, seed=1)

    async def main(requests: int, seconds: float) -> Measured:
        free = [Connection(server.url) for _ in range(conc)]  # one keep-alive connection per client

        async def send(blob: bytes) -> list[float]:
            conn = free.pop()
            try:
                status, body = await conn.post(url, blob, "image/png", {"budget": budget})
            finally:
                free.append(conn)
            if status != 200:
                raise HttpError(f"HTTP {status}: {body}")
            return [p["compute_fraction"] for p in body["predictions"]]

        try:
            return await closed_loop(send, blobs, conc, requests, seconds)
        finally:
            for c in free:
                await c.close()

    asyncio.run(main(args.warmup_requests, 30))
    out = asyncio.run(main(args.requests, args.max_seconds))
    return summarise("http", backend, batching, budget, conc, out)


def median_of(repeat: int, run: Callable[[], Result]) -> Result:
    """Run a configuration ``repeat`` times and keep the run with the median throughput (the
    machine's cores are shared, so single runs are noisy)."""
    runs = sorted((run() for _ in range(repeat)), key=lambda r: r.images_per_s)
    return runs[len(runs) // 2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--package", type=Path, help="model package to serve (default: export an untrained --arch)"
    )
    p.add_argument(
        "--arch", default="msdnet", help="registry model for the untrained package (default msdnet)"
    )
    p.add_argument("--modes", default="engine,http", help="engine,http")
    p.add_argument("--backends", default="torch,onnxruntime", help="torch,onnxruntime")
    p.add_argument("--batching", default="on,off", help="on,off")
    p.add_argument("--budgets", default="0.5,1.0", help="budgets (rows of the package's budget table)")
    p.add_argument("--concurrency", default="1,8,32", help="closed-loop clients")
    p.add_argument("--requests", type=int, default=400, help="requests per configuration (upper bound)")
    p.add_argument(
        "--max-seconds", type=float, default=15.0, help="seconds per configuration (upper bound)"
    )
    p.add_argument("--warmup-requests", type=int, default=20)
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration; the median is shown")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=0.0)
    p.add_argument(
        "--threads", type=int, default=1, help="intra-op threads, both modes (0 = library default)"
    )
    p.add_argument("--server-args", default="", help="extra `python -m service` options (http mode)")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, blobs: list[bytes] | None = None) -> int:
    """Run the grid; ``blobs`` (encoded images) replace the synthetic PNGs when given."""
    args = parse_args(argv)
    args.blobs = blobs
    if args.threads:
        torch.set_num_threads(args.threads)
    lists = {k: getattr(args, k).split(",") for k in ("modes", "backends", "batching")}
    budgets = [float(b) for b in args.budgets.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="anytime-bench-")
    path = args.package or calibrated_package(Path(tmp.name), args.arch, budgets)
    pkg = load_package(path)
    m = pkg.manifest
    print(f"package {m.name} ({m.architecture.name}), torch threads {torch.get_num_threads()}")
    cols = (
        "mode | backend | batching | budget | clients | requests | images/s | p50 ms | p99 ms | compute"
    )
    print(f"| {cols} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results: list[Result] = []

    def show(r: Result) -> None:
        results.append(r)
        print(
            f"| {r.mode} | {r.backend} | {r.batching} | {r.budget} | {r.concurrency} | {r.requests} | "
            f"{r.images_per_s:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.mean_compute_fraction:.3f} |",
            flush=True,
        )

    for backend in lists["backends"]:
        for batching in (b == "on" for b in lists["batching"]):
            configs = [(budget, conc) for budget in budgets for conc in concurrency]
            if "engine" in lists["modes"]:
                for budget, conc in configs:
                    show(
                        median_of(
                            args.repeat, partial(run_engine, pkg, backend, batching, budget, conc, args)
                        )
                    )
            if "http" in lists["modes"]:
                server = HttpServer(path, backend, batching, args)
                try:
                    for budget, conc in configs:
                        run = partial(run_http, server, m.name, backend, batching, budget, conc, args)
                        show(median_of(args.repeat, run))
                finally:
                    server.close()
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
