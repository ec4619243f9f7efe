"""Engine speed in-process: ``python -m benchmarks.engine_speed``.

Closed loop: ``--clients`` clients each submit a request of ``--images`` images straight to the
engine and wait for its answers (no HTTP, no decoding); ``--clients-kind`` says how they wait:
``threads`` (each client a thread blocked on its future; every answer wakes one thread, often on
the other core) or ``asyncio`` (coroutines on one uvloop thread awaiting ``wrap_future``, as the
service's request path does: one wake-up of the loop serves every answer that arrived). Two uses:

- ``--backend stub``: the host overhead. Every stage returns preallocated logits, so all the time
  measured is the engine's own bookkeeping (queues, exit masks, gathers, futures, metrics).
- ``--backend torch|onnxruntime``: the shipped package on real labelled test images (the package's
  held test part, or a ``.npz`` written by ``--save-images``), one row per budget, with accuracy.

Each row: ``images_per_s``, ``p50_ms`` / ``p99_ms`` (request latency), ``accuracy``,
``mean_compute_fraction``, ``wall_us_per_image`` (1e6 / images_per_s), ``cpu_us_per_image``
(this process's CPU time over the images answered: every thread, clients included) and
``engine_cpu_us_per_image`` (the engine's worker threads' CPU time alone: its host time per image
without the load generator's).

"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.data import held_test_images
from benchmarks.harness.engine import (
    at_precision,
    make_engine,
    preprocess,
    resolve_device,
    score,
    submit,
    worker_clocks,
)
from benchmarks.harness.load import Answer, closed_loop, run, thread_loop
from benchmarks.harness.output import write_json
from service.engine.backends import BackendError


def load_images(path: Path | None, pkg: Any, data_dir: str | None) -> tuple[torch.Tensor, Any]:
    """``(x [N,3,H,W], labels [N] | None)``: a ``.npz`` (``x``, ``y``), the package's held test
    part, or random images (the stub, or no data on disk)."""
    if path is not None:
        data = np.load(path)
        return torch.from_numpy(data["x"]), data["y"]
    labelled = held_test_images(pkg.manifest, data_dir)
    if labelled is None:
        h, w = pkg.manifest.preprocessing.input_size
        return torch.randn(512, 3, h, w, generator=torch.Generator().manual_seed(0)), None
    return preprocess(labelled.blobs, pkg.manifest.preprocessing), np.array(labelled.labels)


def load_row(engine: Any, exit_plan: Any, x: torch.Tensor, labels: Any, size: int, clients: int,
             seconds: float, kind: str) -> dict[str, Any]:  # fmt: skip
    """``clients`` clients each submit ``size`` images of ``x`` at random offsets and wait, for
    ``seconds``: the row's images/s, latency and CPU per image."""
    starts = np.random.default_rng(0).integers(0, len(x) - size + 1, 1 << 16)

    def request(i: int) -> tuple[torch.Tensor, Any]:
        j = int(starts[i % len(starts)])
        return x[j : j + size], None if labels is None else labels[j : j + size]

    def call(i: int) -> Answer:
        xs, ys = request(i)
        return score(submit(engine, xs, exit_plan).result(timeout=120), ys)

    async def send(i: int) -> Answer:
        xs, ys = request(i)
        return score(await asyncio.wait_for(asyncio.wrap_future(submit(engine, xs, exit_plan)), 120), ys)

    clocks = worker_clocks(engine)
    engine0, cpu0 = sum(map(time.clock_gettime, clocks)), time.process_time()
    if kind == "threads":
        tally = thread_loop(call, clients, 10**12, seconds)
    else:
        tally = run(closed_loop(send, clients, 10**12, seconds), uvloop=True)
    cpu, engine_cpu = time.process_time() - cpu0, sum(map(time.clock_gettime, clocks)) - engine0
    s, n = tally.summary(labels is not None), max(tally.images, 1)
    keep = ("images_per_s", "p50_ms", "p99_ms", "accuracy", "mean_compute_fraction")
    return {k: s[k] for k in keep} | {
        "wall_us_per_image": 1e6 * tally.elapsed / n, "cpu_us_per_image": 1e6 * cpu / n,
        "engine_cpu_us_per_image": 1e6 * engine_cpu / n, "images": tally.images, "clients_kind": kind,
    }  # fmt: skip


def full_accuracy(
    engine: Any, exit_plan: Any, x: torch.Tensor, labels: np.ndarray
) -> tuple[float, float]:
    """``(accuracy, mean compute fraction)`` over every image, sent as 16-image requests."""
    futures = [submit(engine, x[i : i + 16], exit_plan, 600) for i in range(0, len(x), 16)]
    a = score([r for f in futures for r in f.result(timeout=600)], labels)
    return a.correct / a.images, a.fraction / a.images


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row of this run, on the engine of the checkout ``service`` is imported from."""
    from models.package import load_package

    pkg, device, rows = load_package(args.package), resolve_device(args.device), []
    if args.backend == "stub":
        h, w = pkg.manifest.preprocessing.input_size
        x, labels = torch.randn(256, 3, h, w, generator=torch.Generator().manual_seed(0)), None
    else:
        x, labels = load_images(args.images_npz, pkg, args.data_dir)
        x, labels = x[: args.limit_images], None if labels is None else labels[: args.limit_images]
    grid = list(itertools.product(args.dtypes, args.modes, args.budgets, args.images, args.clients_kind))
    for (dtype, mode, budget, size, kind), _, precision in itertools.product(
        grid, range(args.rounds), args.precisions
    ):  # precisions alternate innermost, so both see the same load
        served = at_precision(pkg, precision)
        engine = make_engine(served, args.backend, device=device, dtype=dtype, threads=args.threads,
                             batch=args.batch, mode=mode)  # fmt: skip
        exit_plan = engine.plan(budget)
        try:
            load_row(engine, exit_plan, x, labels, size, args.clients, min(0.5, args.seconds), kind)
            row = load_row(engine, exit_plan, x, labels, size, args.clients, args.seconds, kind)
            if args.full_accuracy and labels is not None:
                acc, fraction = full_accuracy(engine, exit_plan, x, labels)
                row.update(accuracy=acc, mean_compute_fraction=fraction)
        finally:
            engine.stop()
        backend = engine.backend
        ran = str(getattr(backend, "dtype", dtype)).removeprefix("torch.")
        row = {"mode": mode, "budget": budget, "request_images": size, "clients": args.clients,
               "backend": backend.name, "device": backend.device,
               # what ran: the CPU runs float32 whatever was asked, bfloat16 apart
               "dtype": ran, "precision": "bf16" if ran == "bfloat16" else precision,
               **row}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = suite_parser("benchmarks.engine_speed", __doc__)
    add = ap.add_argument
    add("--backend", default="stub", choices=["stub", "torch", "onnxruntime", "auto"])
    add("--modes", nargs="+", default=["shrink"], choices=["run_to_end", "shrink", "rebatch"])
    add(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=["float32", "float16", "bfloat16"],
        help="torch compute dtypes (on a CPU: float32 or bfloat16)",
    )
    add("--budgets", type=float, nargs="+", default=[0.5])
    add("--precisions", nargs="+", default=["fp32"], choices=["fp32", "int8"],
        help="int8: the package's int8 graphs and budget table (--backend onnxruntime)")  # fmt: skip
    add("--rounds", type=int, default=1, help="repeat every row, precisions alternating")
    add("--images", type=int, nargs="+", default=[1, 16], help="images per request")
    add("--clients", type=int, default=16)
    add(
        "--clients-kind",
        nargs="+",
        default=["threads"],
        choices=["threads", "asyncio"],
        help="threads: each client a thread blocked on its future; asyncio: coroutines on one "
        "uvloop thread awaiting wrap_future, as the service's request path does",
    )
    add("--seconds", type=float, default=3.0, help="length of each row's load")
    add("--batch", type=int, help="max_batch_size (default: the device's)")
    add("--threads", type=int, default=1, help="intra-op threads")
    add("--device", default="cpu", help="cpu | cuda | auto")
    add("--images-npz", type=Path, help="preprocessed images: arrays x [N,3,H,W], y [N]")
    add("--limit-images", type=int, help="use only the first N test images")
    add("--save-images", type=Path, help="write the labelled test images as .npz, exit")
    add(
        "--full-accuracy",
        action="store_true",
        help="accuracy and compute fraction over every test image (not the load's sample)",
    )
    add("--json", type=Path, help="write the rows here")
    return ap.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.save_images is not None:
        from models.package import load_package

        x, y = load_images(None, load_package(args.package), args.data_dir)
        if y is None:
            raise SystemExit("no labelled test images for this package")
        args.save_images.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.save_images, x=x.numpy(), y=y)
        print(f"wrote {len(y)} images to {args.save_images}")
        return
    try:
        rows = measure(args)
    except BackendError as e:  # a backend or precision this package or machine lacks: one line
        raise SystemExit(f"error: {e}") from None
    if args.json is not None:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
