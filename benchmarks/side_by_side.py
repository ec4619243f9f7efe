"""This service against Triton (PyTriton) and LitServe, all loaded by the same wrk script, in one
sitting: ``python -m benchmarks.side_by_side`` (``make bench-peers``).

Every server runs as its own process on this machine, serving the package's network on the CPU:
this service at budgets 1.0 and 0.5 (raw ``image/jpeg`` bodies), the peers at the full network
with their dynamic batching (Triton: a KServe v2 binary body; LitServe: a form upload), in as many
model instances / worker processes as there are cores. With ``--precision auto`` (the default) the
service runs with ``make serve``'s defaults and the peers run, on ONNX Runtime, the graphs the
service chose (fp32 or int8); with ``fp32`` everyone runs torch; with ``int8`` the service serves
the package's int8 graphs on onnxruntime and the peers run the same graphs (``--graphs int8``).
wrk sends the package's held test JPEGs, one per request, from 16 connections, and
scores every answer against its label. The in-process engine runs the same request shape (one
image per request, 16 concurrent clients, decoding in the process) for the HTTP/engine ratio.
The points run round-robin, ``--repeats`` times, so a change in the machine's load falls on all;
while one point runs, LitServe is paused (SIGSTOP) unless it is the one measured: its idle
inference workers poll (0.21 of a core), which would fall on the server measured beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.data import write_held_set
from benchmarks.harness.engine import at_precision, service_workers
from benchmarks.harness.output import write_json
from benchmarks.harness.provenance import REPO, RESULTS, Sitting, display
from benchmarks.harness.servers import Server, ServerSpec, alone, peer_spec, service_spec
from benchmarks.harness.stats import median_run
from benchmarks.harness.wrk import WARMUP_S, WrkError, run_wrk, summarise
from benchmarks.serving import Settings, engine_load
from models.package import load_package, read_manifest

ENGINE_START_S = 30.0  # time for every engine process to load and warm up before the load
PEERS = {"triton": ("v2", "/v2/models/{name}/infer"), "litserve": ("multipart", "/predict")}
PEER_FILES = {"auto": "peers.json", "fp32": "peers_fp32.json", "int8": "peers_int8.json"}
# precision -> (this service's backend, the peers' --graphs); auto: read from the running service
RUNS = {"fp32": ("torch", "torch"), "int8": ("onnxruntime", "int8")}
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def engine_processes(
    package: Path, budget: float, blobs: list[bytes], seconds: float, n: int, served: Served
) -> dict[str, Any]:
    """The in-process engine (one image per request, 16 clients; the service's backend and graphs)
    in ``n`` processes at once (as many as the service's workers), their loads started together:
    images/s summed."""
    s = Settings(concurrency=16, requests=10**7, seconds=seconds, warmup_requests=64)
    backend, precision = served
    if n == 1:
        return engine_load(package, backend, True, budget, 16, s, blobs, None, precision)
    start_at = time.time() + ENGINE_START_S
    point = (package, backend, True, budget, 16, s, blobs, start_at, precision)
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(engine_load, *zip(*[point] * n, strict=True)))
    return {
        "images_per_s": sum(p["images_per_s"] for p in parts),
        "p50_ms": statistics.median(p["p50_ms"] for p in parts),
        "p99_ms": max(p["p99_ms"] for p in parts),
        "mean_compute_fraction": statistics.mean(p["mean_compute_fraction"] for p in parts),
        "processes": n,
    }


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The serving targets' ratios of median images/s from the rows of :func:`measure`."""

    def ips(key: str) -> float:
        return float(rows[key]["images_per_s"]) if key in rows else float("nan")

    peers = {k: ips(k) for k in ("triton (full network)", "litserve (full network)") if k in rows}
    better = max(peers, key=lambda k: peers[k]) if peers else None
    b10, b05 = ips("anytime HTTP, budget 1.0"), ips("anytime HTTP, budget 0.5")
    acc = {b: rows[f"anytime HTTP, budget {b}"]["accuracy"] for b in ("0.5", "1.0")}
    out: dict[str, Any] = {
        "http_b05_over_b10": b05 / b10,
        "accuracy_b05_minus_b10_points": 100 * (acc["0.5"] - acc["1.0"]),
        "better_peer": better,
        "http_b10_over_engine_b10": b10 / ips("engine, budget 1.0"),
        "http_b05_over_engine_b05": b05 / ips("engine, budget 0.5"),
    }
    if better is not None:
        out |= {
            "http_b05_over_better_peer": b05 / peers[better],
            "http_b10_over_better_peer": b10 / peers[better],
        }
    return out


Point = tuple[str, str, str, str]  # label, server, path, request body


Served = tuple[str, str]  # (backend, precision) of the service's stages


def service_under_test(args: argparse.Namespace) -> ServerSpec:
    """``python -m service`` at ``args.precision``: ``auto`` leaves every choice to its defaults."""
    workers = [] if args.workers is None else ["--workers", str(args.workers)]
    if args.precision == "auto":
        return service_spec(args.package, None, workers)
    backend = RUNS[args.precision][0]
    extra = ["--precision", args.precision, *(workers or ["--workers", "auto"])]
    return service_spec(args.package, backend, extra)


def served_as(url: str, name: str) -> Served:
    """The backend (``anytime_model_info``'s label) and precision (``/v1/models``) it serves."""
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
        precision = next(m["precision"] for m in json.load(r)["models"] if m["name"] == name)
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        info = next(line for line in r.read().decode().splitlines()
                    if line.startswith("anytime_model_info{") and f'model="{name}"' in line)  # fmt: skip
    match = re.search(r'backend="([^"]+)"', info)
    assert match is not None, info
    return match.group(1), precision


def peer_graphs(args: argparse.Namespace) -> str:
    """What the peers run: ``RUNS``'s choice, or under ``auto`` the graphs the service serves."""
    return RUNS[args.precision][1] if args.precision in RUNS else args.served[1]


def peer_specs(args: argparse.Namespace, name: str) -> tuple[list[ServerSpec], list[Point]]:
    """The peers (none with ``--no-peers``) on the graphs that match what the service serves, and
    the load points of everyone: (label, server, path, body)."""
    graphs = peer_graphs(args)
    specs = [peer_spec(peer, args.package, name, args.peer_threads, graphs, args.peer_instances)
             for peer in ({} if args.no_peers else PEERS)]  # fmt: skip
    points = [(f"anytime HTTP, budget {b}", "anytime", f"/v1/models/{name}/classify?budget={b}", "raw")
              for b in (1.0, 0.5)]  # fmt: skip
    for peer, (body, path) in {} if args.no_peers else PEERS.items():
        points.append((f"{peer} (full network)", peer, path.format(name=name), body))
    return specs, points


def measure(args: argparse.Namespace, images: Path) -> dict[str, Any]:
    """Start every server, then run every point ``args.repeats`` times round-robin."""
    name = read_manifest(args.package).name
    blobs = [p.read_bytes() for p in sorted(images.glob("*.jpg"))]
    runs: dict[str, list[Any]] = {}
    cpu: dict[str, list[float]] = {}
    engine: dict[str, list[dict[str, Any]]] = {f"engine, budget {b}": [] for b in (1.0, 0.5)}
    with ExitStack() as stack:
        service = service_under_test(args)
        print(f"starting anytime: {' '.join(service.command)}", flush=True)
        servers = {"anytime": stack.enter_context(Server(service, args.logs / "anytime.log"))}
        args.served = served_as(servers["anytime"].url, name)
        args.processes = service_workers() if args.workers is None else args.workers
        specs, points = peer_specs(args, name)
        runs = {label: [] for label, *_ in points}
        cpu = {label: [] for label, *_ in points}
        for s in specs:
            print(f"starting {s.name}: {' '.join(s.command)}", flush=True)
            servers[s.name] = stack.enter_context(Server(s, args.logs / f"{s.name}.log"))
        # Each point runs with LitServe paused unless measured (`alone`): idle, it still polls.
        for _, server, path, body in points:  # warm-up: first batches, allocator, connections
            with contextlib.suppress(WrkError), alone(servers.values(), servers[server]):
                run_wrk(servers[server].url, path, body, images, 2, args.connections)
        for r in range(args.repeats):
            for label, server, path, body in points:
                srv, offset = servers[server], r * len(blobs) // args.repeats
                cpu0 = srv.cpu_seconds()
                with alone(servers.values(), srv):
                    res = run_wrk(srv.url, path, body, images, args.seconds, args.connections, offset)
                # CPU over the whole wrk run, so per answer of the whole run (warm-up included)
                cpu[label].append(1e3 * (srv.cpu_seconds() - cpu0) / max(res.requests, 1))
                runs[label].append(res)
                print(f"  [{r + 1}/{args.repeats}] {label}: {res.images_per_s:.1f} img/s, acc "
                      f"{res.accuracy:.4f}, p50 {res.p50_ms:.1f} ms", flush=True)  # fmt: skip
            for b in (1.0, 0.5):
                with alone(servers.values()):
                    e = engine_processes(
                        args.package, b, blobs, args.seconds, args.processes, args.served
                    )
                engine[f"engine, budget {b}"].append(e)
                print(
                    f"  [{r + 1}/{args.repeats}] engine b{b}: {e['images_per_s']:.1f} img/s", flush=True
                )
    rows = {
        label: summarise(runs[label], cpu[label]) | {"server": server, "body": body, "path": path,
                                                     "precision": args.served[1] if server == "anytime"
                                                     else peer_graphs(args)}
        for label, server, path, body in points
    }  # fmt: skip
    for label, es in engine.items():
        median = median_run(es)
        rows[label] = median | {"server": "in-process", "body": "decoded in process",
                                "precision": args.served[1],
                                "images_per_s": statistics.median(e["images_per_s"] for e in es),
                                }  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = suite_parser("benchmarks.side_by_side", __doc__)
    add = p.add_argument
    add("--seconds", type=float, default=5.0, help="seconds per wrk run")
    add("--repeats", type=int, default=3)
    add("--connections", type=int, default=16)
    add("--peer-threads", type=int, default=1, help="intra-op threads per peer instance")
    add(
        "--peer-instances",
        type=int,
        default=CORES,
        help="Triton model instances / LitServe worker processes (default: one per core)",
    )
    add("--no-peers", action="store_true", help="this service and the engine only")
    add(
        "--workers",
        type=int,
        help="this service's worker processes (default: its own, auto = one per core); the "
        "in-process engine point runs in as many processes",
    )
    add(
        "--precision",
        choices=["auto", *RUNS],
        default=os.environ.get("ANYTIME_PRECISION", "auto"),
        help="auto: the service at make serve's defaults, the peers on ONNX Runtime running the "
        "graphs it chose; fp32: everyone runs torch; int8: the service serves the package's int8 "
        "graphs (onnxruntime), the peers run the same graphs (default: $ANYTIME_PRECISION, else auto)",
    )
    add(
        "--out",
        type=Path,
        help="results (default benchmarks/results/peers.json; fp32, int8: "
        "peers_fp32.json, peers_int8.json)",
    )
    add("--logs", type=Path, default=REPO / "runs" / "peers", help="servers' logs")
    args = p.parse_args(argv)  # fmt: skip
    args.out = args.out or RESULTS / PEER_FILES[args.precision]
    sitting = Sitting("benchmarks.side_by_side", argv)
    images = write_held_set(args.package, args.logs / "images", args.data_dir)
    print(f"uptime before: {sitting.uptime0}", flush=True)
    rows = measure(args, images)
    backend, precision = args.served
    table = at_precision(load_package(args.package), precision).manifest.budgets
    table_rows = {r.budget: r.accuracy for r in table}
    chosen = "make serve's defaults: " if args.precision == "auto" else ""
    settings = {
        "seconds": args.seconds, "warmup_seconds": WARMUP_S, "repeats": args.repeats,
        "connections": args.connections, "images": len(list(images.glob("*.jpg"))),
        "package": display(args.package), "workers": args.processes,
        "package_accuracy": {str(b): a for b in (1.0, 0.5) if (a := table_rows.get(b)) is not None},
        "precision": precision, "mode": args.precision,
        "service": f"{chosen}python -m service, backend {backend}, precision {precision}, "
        f"{args.processes} worker process(es) (defaults: batching on, max batch 32, delay 0, 1 "
        "intra-op thread)",
        "peers": (f"onnxruntime on the package's {precision} graphs (the ones the service serves), "
                  if peer_graphs(args) != "torch" else "torch, ")
        + f"{args.peer_instances} instance(s) of {args.peer_threads} intra-op thread(s), max batch "
        "32; Triton dynamic batcher queue delay 1000 us; LitServe batch_timeout 1 ms",
    }  # fmt: skip
    out = {"meta": sitting.meta(), "settings": settings, "rows": rows, "ratios": ratios(rows)}
    write_json(args.out, out)
    print(f"uptime after: {out['meta']['uptime_after']}\n{out['ratios']}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
