"""This service against Triton (PyTriton) and LitServe, all loaded by the same wrk script, in one
sitting: ``python -m benchmarks.side_by_side`` (``make bench-peers``).

Every server runs as its own process on this machine, serving the package's network with torch
on the CPU: this service at budgets 1.0 and 0.5 (raw ``image/jpeg`` bodies), the peers at the
full network with their dynamic batching (Triton: a KServe v2 binary body; LitServe: a form
upload). wrk sends the package's held test JPEGs, one per request, from 16 connections, and
scores every answer against its label. The in-process engine runs the same request shape (one
image per request, 16 concurrent clients, decoding in the process) for the HTTP/engine ratio.
The points run round-robin, ``--repeats`` times, so a change in the machine's load falls on all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.launch import REPO, Server, ServerSpec, free_port_block, service_spec
from benchmarks.pipeline import commit, machine, reproduce_command
from benchmarks.wrk_load import WARMUP_S, run_wrk, summarise

PEER_VENVS = REPO / ".peers"
TARGETS = {
    ">= 1.6 at accuracy within 0.5 point": "http_b05_over_b10",
    ">= 1.5": "http_b05_over_better_peer",
    ">= 1.0": "http_b10_over_better_peer",
    ">= 0.8": "http_b10_over_engine_b10",
}


@dataclass(frozen=True)
class Point:
    """One measured configuration: which server, and the request path and body wrk sends."""

    label: str
    server: str  # key of the server that answers it
    path: str
    body: str


def peer_specs(
    package: Path, name: str, threads: int, precision: str = "fp32"
) -> tuple[list[ServerSpec], list[Point]]:
    """Triton and LitServe on the full network, each from its venv under ``.peers``: the torch
    model, or with ``precision`` int8 the package's int8 graphs on ONNX Runtime (what the
    service serves then)."""
    graphs = "int8" if precision == "int8" else "torch"
    specs, points = [], []
    for peer, body, path, ready in (
        ("triton", "v2", f"/v2/models/{name}/infer", f"/v2/models/{name}/ready"),
        ("litserve", "multipart", "/predict", "/health"),
    ):
        python = PEER_VENVS / peer / "bin" / "python"
        if not python.is_file():
            raise SystemExit(f"error: {python} is missing: `make peers` creates the peers' venvs")
        port = free_port_block(3)  # Triton: http, grpc, metrics
        cmd = [str(python), "-m", f"benchmarks.peers.{peer}_server", "--package", str(package),
               "--port", str(port), "--threads", str(threads), "--graphs", graphs]  # fmt: skip
        specs.append(ServerSpec(peer, cmd, ready, port))
        points.append(Point(f"{peer} (full network)", peer, path, body))
    return specs, points


ENGINE_START_S = 30.0  # time for every engine process to load and warm up before the load


def engine_point(
    package: Path,
    budget: float,
    blobs: list[bytes],
    seconds: float,
    start_at: float | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The in-process engine, torch backend (int8: onnxruntime on the int8 graphs), one image
    per request, 16 concurrent clients; the load starts at wall-clock ``start_at`` when given
    (after loading and warm-up)."""
    from benchmarks import serving
    from models.package import load_package
    from service.engine.precision import at_int8

    args = argparse.Namespace(
        threads=1, max_batch_size=32, max_delay_ms=0.0, requests=10**7, max_seconds=seconds,
        warmup_requests=64, blobs=blobs, start_at=start_at,
    )  # fmt: skip
    pkg = load_package(package)
    served, backend = (at_int8(pkg), "onnxruntime") if precision == "int8" else (pkg, "torch")
    r = serving.run_engine(served, backend, True, budget, 16, args)
    return {"images_per_s": r.images_per_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "mean_compute_fraction": r.mean_compute_fraction}  # fmt: skip


def engine_processes(
    package: Path, budget: float, blobs: list[bytes], seconds: float, processes: int, precision: str
) -> dict[str, Any]:
    """:func:`engine_point` in ``processes`` processes at once (as many as the service's
    workers), each with 16 clients, their loads started together: images/s summed."""
    if processes == 1:
        return engine_point(package, budget, blobs, seconds, precision=precision)
    start_at = time.time() + ENGINE_START_S
    n = processes
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(
            pool.map(engine_point, [package] * n, [budget] * n, [blobs] * n, [seconds] * n,
                     [start_at] * n, [precision] * n)
        )  # fmt: skip
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

    peers: dict[str, float] = {
        k: ips(k) for k in ("triton (full network)", "litserve (full network)") if k in rows
    }
    better = max(peers, key=lambda k: peers[k]) if peers else None
    b10, b05 = ips("anytime HTTP, budget 1.0"), ips("anytime HTTP, budget 0.5")
    out: dict[str, Any] = {
        "http_b05_over_b10": b05 / b10,
        "accuracy_b05_minus_b10_points": 100
        * (rows["anytime HTTP, budget 0.5"]["accuracy"] - rows["anytime HTTP, budget 1.0"]["accuracy"]),
        "better_peer": better,
        "http_b10_over_engine_b10": b10 / ips("engine, budget 1.0"),
        "http_b05_over_engine_b05": b05 / ips("engine, budget 0.5"),
    }
    if better is not None:
        out["http_b05_over_better_peer"] = b05 / peers[better]
        out["http_b10_over_better_peer"] = b10 / peers[better]
    return out


def package_accuracy(package: Path) -> dict[str, float]:
    """Test accuracy of the budget-table rows 1.0 and 0.5, as calibration recorded it."""
    from models.package import read_manifest

    rows = {r.budget: r.accuracy for r in read_manifest(package).budgets}
    return {str(b): a for b in (1.0, 0.5) if (a := rows.get(b)) is not None}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(args: argparse.Namespace, images: Path) -> dict[str, Any]:
    """Start every server, then run every point ``args.repeats`` times round-robin."""
    from models.package import read_manifest

    name = read_manifest(args.package).name
    extra = [] if args.workers == 1 else ["--workers", str(args.workers)]
    if args.precision == "int8":  # the int8 graphs run on onnxruntime
        extra += ["--backend", "onnxruntime"]
    svc = service_spec(args.package, free_port_block(1), [*extra, "--precision", args.precision])
    points = [Point(f"anytime HTTP, budget {b}", "anytime",
                    f"/v1/models/{name}/classify?budget={b}", "raw") for b in (1.0, 0.5)]  # fmt: skip
    specs = [svc]
    if not args.no_peers:
        more_specs, more_points = peer_specs(args.package, name, args.peer_threads, args.precision)
        specs, points = specs + more_specs, points + more_points
    blobs = [p.read_bytes() for p in sorted(images.glob("*.jpg"))]
    runs: dict[str, list[Any]] = {p.label: [] for p in points}
    engine: dict[str, list[dict[str, Any]]] = {f"engine, budget {b}": [] for b in (1.0, 0.5)}
    cpu: dict[str, list[float]] = {p.label: [] for p in points}
    n_images = len(blobs)
    with ExitStack() as stack:
        servers = {}
        for s in specs:
            print(f"starting {s.name}: {' '.join(s.command)}", flush=True)
            servers[s.name] = stack.enter_context(Server(s, args.logs / f"{s.name}.log"))
        for p in points:  # warm-up: first batches, allocator, connection set-up; not recorded
            run_wrk(servers[p.server].spec.url, p.path, p.body, images, 2, args.connections)
        for r in range(args.repeats):
            offset = r * n_images // args.repeats
            for p in points:
                srv = servers[p.server]
                cpu0 = srv.cpu_seconds()
                res = run_wrk(
                    srv.spec.url, p.path, p.body, images, args.seconds, args.connections, offset
                )
                # CPU over the whole wrk run, so per answer of the whole run (warm-up included)
                cpu[p.label].append(1e3 * (srv.cpu_seconds() - cpu0) / max(res.requests, 1))
                runs[p.label].append(res)
                print(f"  [{r + 1}/{args.repeats}] {p.label}: {res.images_per_s:.1f} img/s, "
                      f"acc {res.accuracy:.4f}, p50 {res.p50_ms:.1f} ms", flush=True)  # fmt: skip
            for b in (1.0, 0.5):
                e = engine_processes(args.package, b, blobs, args.seconds, args.workers, args.precision)
                engine[f"engine, budget {b}"].append(e)
                print(
                    f"  [{r + 1}/{args.repeats}] engine b{b}: {e['images_per_s']:.1f} img/s", flush=True
                )
    rows: dict[str, dict[str, Any]] = {}
    for p in points:
        rows[p.label] = summarise(runs[p.label]) | {
            "server": p.server, "body": p.body, "path": p.path,
            "server_cpu_ms_per_image": statistics.median(cpu[p.label]),
        }  # fmt: skip
    for label, es in engine.items():
        ranked = sorted(es, key=lambda e: e["images_per_s"])
        rows[label] = ranked[len(ranked) // 2] | {
            "server": "in-process", "body": "decoded in process",
            "images_per_s": statistics.median(e["images_per_s"] for e in es),
            "images_per_s_range": [ranked[0]["images_per_s"], ranked[-1]["images_per_s"]],
        }  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.side_by_side", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--package", type=Path, default=REPO / "packages" / "default")
    p.add_argument("--data-dir", help="CIFAR-10 JPEG archive or tree (default: the package config's)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--peer-threads", type=int, default=1, help="torch intra-op threads in the peers")
    p.add_argument("--no-peers", action="store_true", help="this service and the engine only")
    p.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default=os.environ.get("ANYTIME_PRECISION", "fp32"),
        help="fp32: everyone runs torch; int8: the service serves the package's int8 graphs "
        "(onnxruntime) and the peers run the same graphs (default: $ANYTIME_PRECISION, else fp32)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="this service's worker processes (python -m service --workers N; default 2, the CPU "
        "image's setting); the in-process engine point runs in as many processes",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "peers.json")
    p.add_argument("--logs", type=Path, default=REPO / "runs" / "peers", help="servers' logs")
    args = p.parse_args(argv)
    return run(args, argv)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from benchmarks.held_jpegs import write_held_set

    images = write_held_set(args.package, args.logs / "images", args.data_dir)
    up0, load0, t0 = uptime(), os.getloadavg()[0], time.time()
    print(f"uptime before: {up0}", flush=True)
    rows = measure(args, images)
    up1 = uptime()
    print(f"uptime after: {up1}", flush=True)
    out = {
        "meta": {
            "command": reproduce_command("benchmarks.side_by_side", argv),
            "machine": machine(),
            "commit": commit(),
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "wall_seconds": round(time.time() - t0, 1),
            "uptime_before": up0,
            "uptime_after": up1,
            "loadavg_1m": [load0, os.getloadavg()[0]],
        },
        "settings": {
            "seconds": args.seconds,
            "warmup_seconds": WARMUP_S,
            "repeats": args.repeats,
            "connections": args.connections,
            "images": len(list(images.glob("*.jpg"))),
            "package": str(args.package.resolve().relative_to(REPO))
            if args.package.resolve().is_relative_to(REPO)
            else str(args.package),
            "package_accuracy": package_accuracy(args.package),
            "service": f"python -m service --device cpu --workers {args.workers} "
            + ("--backend torch" if args.precision != "int8" else "--backend onnxruntime")
            + f" --precision {args.precision} "
            "(defaults: batching on, max batch 32, delay 0, 1 intra-op thread)",
            "workers": args.workers,
            "peers": (
                "onnxruntime on the package's int8 graphs, the ones the service serves, "
                if args.precision == "int8"
                else "torch "
            )
            + f"{args.peer_threads} intra-op thread(s), max batch 32; Triton dynamic "
            "batcher queue delay 1000 us; LitServe batch_timeout 1 ms",
        },
        "rows": rows,
        "ratios": ratios(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["ratios"], indent=2))
    print(f"wrote {args.out}")
    return 0


def bench_peers(args: argparse.Namespace, out: Path, quick: bool) -> int:
    """``python -m benchmarks --only peers``: the side-by-side run and the request-cost profile
    (:mod:`benchmarks.profile`) into ``out``, then ``BENCHMARKS.md`` rendered anew from
    ``out/results.json`` (the other sections' figures stay as measured)."""
    from benchmarks import profile
    from benchmarks.report import render

    common = ["--data-dir", args.data_dir] if args.data_dir else []
    if args.serve_package:
        common += ["--package", str(args.serve_package)]
    seconds = args.max_seconds or (2.0 if quick else 5.0)
    repeats = "1" if quick else "3"
    code = main(
        [*common, "--out", str(out / "peers.json"), "--seconds", str(seconds), "--repeats", repeats]
    )
    if code == 0 and not args.no_profile:
        prof_out = str(out / "profile_components.json")
        code = profile.main([*common, "--out", prof_out, "--seconds", str(2 * seconds)])
    results = out / "results.json"
    if code == 0 and results.is_file():
        published = out.resolve() == (REPO / "benchmarks" / "results").resolve()
        md = args.markdown or (REPO / "BENCHMARKS.md" if published else out / "BENCHMARKS.md")
        md.write_text(render(json.loads(results.read_text()), out, REPO))
        print(f"wrote {md}")
    return code


if __name__ == "__main__":
    sys.exit(main())
