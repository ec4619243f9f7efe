"""Engine topologies on the simulated device: ``shared`` vs ``per-worker`` over HTTP.

``python -m benchmarks.topology_sim`` serves the package with ``--workers FRONT_ENDS`` on the
simulated device (service/engine/simulated.py: every stage run sleeps ``launch + per_image x
batch`` on one device all processes share; its answers are the real model's), once per
topology, alternating, and loads each with wrk (one held-out JPEG per request at one budget).
Per run: images/s in wrk's window, the mean batch per stage run over that window (from
``/metrics``, summed over every process), and the share of the window the device was busy.
Writes ``benchmarks/results/topology_sim.json``.

``--backend onnxruntime`` (or ``torch``) measures the same on the CPU itself, no simulated
device (``device_busy`` is then null): which topology serves a CPU better.

A stage's answers come from the real network, run once per distinct image on the CPU the first
time the engine sees it; a warm-up run sends the whole image set first so that the measured
window holds simulated device time only.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.data import write_held_set
from benchmarks.harness.engine import batch_sums as engine_batch_sums
from benchmarks.harness.output import table, write_json
from benchmarks.harness.provenance import RESULTS, Sitting, display
from benchmarks.harness.servers import Server, service_spec
from benchmarks.harness.wrk import parse_wrk_output, to_result, wrk_command
from models.package import read_manifest
from service.engine.simulated import busy_seconds

TOPOLOGIES = ("per-worker", "shared")


def batch_sums(url: str) -> dict[int, tuple[float, float]]:
    """Per stage: (images run, stage runs) so far, over every process, from ``/metrics``."""
    return engine_batch_sums(
        text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text)
    )


def measured_run(
    server: Server, path: str, images: Path, seconds: float, connections: int, lock: Path | None
) -> dict[str, Any]:
    """One wrk run; batch sizes and device time are read at its window's start and end."""
    warmup = 3.0
    start = time.time() + warmup
    cmd = wrk_command(server.url, path, "raw", images, (start, start + seconds), connections)
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    runner = threading.Thread(
        target=lambda: done.update(run=subprocess.run(cmd, capture_output=True, text=True))
    )
    runner.start()
    time.sleep(max(0.0, start - time.time()))
    busy = (lambda: busy_seconds(lock)) if lock is not None else (lambda: 0.0)
    batches0, busy0, t0 = batch_sums(server.url), busy(), time.monotonic()
    time.sleep(max(0.0, start + seconds - time.time()))
    batches1, busy1, t1 = batch_sums(server.url), busy(), time.monotonic()
    runner.join()
    wrk = to_result(parse_wrk_output(done["run"].stdout), connections, warmup)
    deltas = [
        (b[0] - batches0.get(k, (0.0, 0.0))[0], b[1] - batches0.get(k, (0.0, 0.0))[1])
        for k, b in sorted(batches1.items())
    ]  # per stage: images run, stage runs, in the window
    per_stage = [n / max(runs, 1.0) for n, runs in deltas]
    ran, runs = sum(n for n, _ in deltas), sum(r for _, r in deltas)
    return {
        "images_per_s": wrk.images_per_s,
        "mean_batch": ran / runs if runs else 0.0,
        "mean_batch_per_stage": [round(b, 2) for b in per_stage],
        "device_busy": (busy1 - busy0) / (t1 - t0) if lock is not None else None,
        "p50_ms": wrk.p50_ms,
        "p99_ms": wrk.p99_ms,
        "failed": wrk.failed,
        "accuracy": wrk.accuracy,
    }


def serve_and_measure(
    args: argparse.Namespace, topology: str, scale: float, budget: float, images: Path, tmp: Path,
    name: str, repeat: int,
) -> dict[str, Any]:  # fmt: skip
    tag = f"{topology}-{scale}-{budget}-{repeat}"
    lock: Path | None = tmp / f"device-{tag}"
    extra = [
        "--workers", str(args.front_ends), "--engine-topology", topology,
        "--batching.workers", str(args.engine_threads), "--batching.mode", args.mode,
    ]  # fmt: skip
    if args.backend == "simulated":
        extra += [
            "--simulated-device.enabled", "--simulated-device.lock-file", str(lock),
            "--simulated-device.launch-ms", str(args.launch_ms * scale),
            "--simulated-device.per-image-us", str(args.per_image_us * scale),
        ]  # fmt: skip
    else:
        lock = None
    path = f"/v1/models/{name}/classify?budget={budget}"
    backend, device = ("torch", "cpu") if args.backend == "simulated" else (args.backend, args.device)
    spec = service_spec(args.package, backend, extra, device)
    with Server(spec, tmp / f"server-{tag}.log") as server:
        # Every process has seen every image once (the real network ran on it): not measured.
        t0 = time.time()
        warm = wrk_command(server.url, path, "raw", images, (t0, t0 + args.warmup_s), args.connections)
        subprocess.run(warm, capture_output=True, check=True)
        row = measured_run(server, path, images, args.seconds, args.connections, lock)
    print(f"{tag}: {row}", flush=True)
    return {
        "topology": topology, "front_ends": args.front_ends, "budget": budget,
        "device": "simulated" if args.backend == "simulated" else args.device,
        "device_scale": scale, **row,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = suite_parser("benchmarks.topology_sim", __doc__)
    p.add_argument("--front-ends", type=int, default=2)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5])
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=6.0, help="unmeasured run before each")
    p.add_argument("--repeat", type=int, default=2, help="runs per topology, alternating")
    p.add_argument("--images", type=int, default=256, help="distinct held-out images sent")
    p.add_argument("--launch-ms", type=float, default=5.3)
    p.add_argument("--per-image-us", type=float, default=3.3)
    p.add_argument(
        "--device-scales", type=float, nargs="+", default=[1.0, 8.0],
        help="factors on both costs; 8 keeps a 16-core GPU host's host:device ratio on 2 cores",
    )  # fmt: skip
    p.add_argument("--backend", default="simulated", choices=["simulated", "onnxruntime", "torch"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where a real backend runs")
    p.add_argument(
        "--images-dir", type=Path,
        help="JPEGs + labels.txt as the harness writes them (default: the package's held test "
        "part, read from --data-dir)",
    )  # fmt: skip
    p.add_argument("--mode", default="shrink", choices=["shrink", "rebatch", "run_to_end"])
    p.add_argument("--engine-threads", type=int, default=1, help="worker threads per engine")
    p.add_argument("--out", type=Path, default=RESULTS / "topology_sim.json")
    args = p.parse_args(argv)
    sitting = Sitting("benchmarks.topology_sim", argv)
    name = read_manifest(args.package).name
    with tempfile.TemporaryDirectory(prefix="topology-sim-") as d:
        tmp = Path(d)
        held = args.images_dir
        images = held or write_held_set(args.package, tmp / "held", args.data_dir, args.images)
        n_images = len((images / "labels.txt").read_text().splitlines())
        rows = [
            serve_and_measure(args, topology, scale, budget, images, tmp, name, r)
            for scale in args.device_scales
            for budget in args.budgets
            for r in range(args.repeat)
            for topology in (TOPOLOGIES if r % 2 == 0 else TOPOLOGIES[::-1])
        ]
    keys = ("images_per_s", "mean_batch") + (("device_busy",) if args.backend == "simulated" else ())
    summary, ratio = {}, {}  # per "scale budget": medians per topology, shared / per-worker
    for scale in args.device_scales:
        for budget in args.budgets:
            mine = [r for r in rows if (r["device_scale"], r["budget"]) == (scale, budget)]
            med = {
                t: {k: statistics.median(r[k] for r in mine if r["topology"] == t) for k in keys}
                for t in TOPOLOGIES
            }
            summary[f"{scale} {budget}"] = med
            ratio[f"{scale} {budget}"] = {k: med["shared"][k] / med["per-worker"][k] for k in keys[:2]}
    meta = sitting.meta(
        launch_ms=args.launch_ms, per_image_us=args.per_image_us, connections=args.connections,
        seconds=args.seconds, images=n_images, repeat=args.repeat,
        engine_threads=args.engine_threads, mode=args.mode, backend=args.backend,
    )  # fmt: skip
    results = {"meta": meta, "rows": rows, "median": summary, "shared_over_per_worker": ratio}
    write_json(args.out, results)
    head = ["topology", "scale", "front ends", "budget", "images/s", "mean batch", "per stage",
            "device busy"]  # fmt: skip
    print("\n".join(table(head, [
        [r["topology"], r["device_scale"], r["front_ends"], r["budget"], f"{r['images_per_s']:.1f}",
         f"{r['mean_batch']:.2f}", " / ".join(map(str, r["mean_batch_per_stage"])),
         "-" if r["device_busy"] is None else f"{r['device_busy']:.2f}"] for r in rows
    ])))  # fmt: skip
    print(f"shared / per-worker (medians): {ratio}; wrote {display(args.out)}")


if __name__ == "__main__":
    main()
