"""Engine speed in-process: ``python -m benchmarks.engine_speed``.

Closed loop: ``--clients`` clients each submit a request of ``--images`` images straight to the
engine and wait for its answers (no HTTP, no decoding); ``--clients-kind`` says how they wait
(``threads``, or ``asyncio`` as the service does: see ``closed_loop``). Two uses:

- ``--backend stub``: the host overhead. Every stage returns preallocated logits, so all the time
  measured is the engine's own bookkeeping (queues, exit masks, gathers, futures, metrics).
- ``--backend torch|onnxruntime``: the shipped package on real labelled test images (the package's
  held test part, or a ``.npz`` written by ``--save-images``), one row per budget, with accuracy.

Each row: ``images_per_s``, ``p50_ms`` / ``p99_ms`` (request latency), ``accuracy``,
``mean_compute_fraction``, ``wall_us_per_image`` (1e6 / images_per_s), ``cpu_us_per_image``
(this process's CPU time over the images answered: every thread, clients included) and
``engine_cpu_us_per_image`` (the engine's worker threads' CPU time alone: its host time per image
without the load generator's).

``--compare DIR`` runs the same rows on the engine of another checkout ``DIR`` (e.g. main) and on
this one, alternating ``--repeat`` times in child processes, so before/after share one sitting of
a shared machine; the ratio of the medians is printed (``benchmarks/engine_compare.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


class StubBackend:
    """Zero-cost stages: logits and the carried state are preallocated ``[rows, ...]`` slices.

    Confidences vary from row to row (random logits, one array per stage), so a budget below 1
    sends some images out at every exit, as real traffic would. The carried state is one float
    per image: gathering survivors costs what the engine's bookkeeping costs, not a copy of the
    network's feature maps.
    """

    name, device = "stub", "cpu"

    def __init__(self, num_exits: int, num_classes: int, rows: int = 4096, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.logits = [3.0 * torch.randn(rows, num_classes, generator=g) for _ in range(num_exits)]
        self.state = torch.zeros(rows, 1)

    def run_stage(
        self, k: int, state: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        n = state[0].shape[0]
        return (self.state[:n],), self.logits[k][:n]


def make_engine(pkg: Any, args: argparse.Namespace, mode: str, dtype: str, device: str) -> Any:
    """The engine of whichever checkout is on ``sys.path`` (``--compare`` runs an older one)."""
    from service.metrics import ServiceMetrics

    m = pkg.manifest
    stub = StubBackend(m.num_exits, len(m.classes)) if args.backend == "stub" else None
    try:
        from service.engine import EngineConfig, build_engine
        from service.engine.factory import default_max_batch
    except ImportError:  # a checkout from before build_engine
        from service.engine import EngineConfig, ModelEngine
        from service.engine.backends import build_backend

        backend = stub or build_backend(pkg, args.backend, device, dtype, args.threads)
        cfg = EngineConfig(
            max_batch_size=args.batch or 32, queue_size=10**6, mode=mode, intra_op_threads=args.threads
        )
        engine = ModelEngine(m.name, m, backend, cfg, ServiceMetrics())
        engine.warmup()
        engine.start()
        return engine
    batch = args.batch or default_max_batch(device)
    cfg = EngineConfig(max_batch_size=batch, queue_size=10**6, mode=mode, intra_op_threads=args.threads)
    return build_engine(
        pkg, stub or args.backend, cfg, ServiceMetrics(), device=device, dtype=dtype,
        threads=args.threads,
    )  # fmt: skip


def freeze_heap() -> None:
    """What the service does once started (``freeze_startup_heap``), where the checkout has it."""
    try:
        from service.engine.factory import freeze_startup_heap
    except ImportError:  # an older checkout under --compare
        return
    freeze_startup_heap()


def full_accuracy(engine: Any, plan: Any, x: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """``(accuracy, mean compute fraction)`` over every image, sent as 16-image requests."""
    works = [engine.submit(x[i : i + 16], plan, time.monotonic() + 600) for i in range(0, len(x), 16)]
    got = [r for w in works for r in w.future.result(timeout=600)]
    pred = np.array([int(r.probs.argmax()) for r in got])
    return float((pred == labels).mean()), float(np.mean([r.compute_fraction for r in got]))


ClientKind = Literal["threads", "asyncio"]


@dataclass
class Tally:
    """What the clients received: latencies (s), images, right answers, compute fractions."""

    latencies: list[float] = field(default_factory=list)
    images: int = 0
    correct: int = 0
    fraction: float = 0.0

    def add(self, got: list[Any], latency: float, labels: np.ndarray | None, first: int) -> None:
        self.latencies.append(latency)
        self.images += len(got)
        self.fraction += sum(r.compute_fraction for r in got)
        if labels is not None:
            self.correct += sum(int(r.probs.argmax() == labels[first + j]) for j, r in enumerate(got))

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.images += other.images
        self.correct += other.correct
        self.fraction += other.fraction


def worker_clocks(engine: Any) -> list[int]:
    """CPU-time clocks of the engine's worker threads (every checkout keeps them in ``_threads``)."""
    return [time.pthread_getcpuclockid(t.ident) for t in engine._threads]


def closed_loop(
    engine: Any,
    plan: Any,
    x: torch.Tensor,
    labels: np.ndarray | None,
    size: int,
    clients: int,
    seconds: float,
    kind: ClientKind = "threads",
) -> dict[str, Any]:
    """``clients`` clients each submit ``size`` images of ``x [N, 3, H, W]`` and wait, for
    ``seconds``; returns the row's figures (images/s, latency, CPU per image).

    ``threads``: each client is a Python thread blocked on its request's future; every answer
    wakes one thread, often on the other core. ``asyncio``: the clients are coroutines on one
    uvloop event loop thread awaiting ``asyncio.wrap_future(work.future)``, as the service's
    request path does (``service/serving.py``): an answer schedules a callback on the loop, and
    one wake-up of the loop serves every answer that arrived meanwhile.
    """
    run = _threads if kind == "threads" else _asyncio
    workers = worker_clocks(engine)
    engine0 = sum(map(time.clock_gettime, workers))
    cpu0, t0 = time.process_time(), time.monotonic()
    tally = run(engine, plan, x, labels, size, clients, t0 + seconds)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    engine_cpu = sum(map(time.clock_gettime, workers)) - engine0
    n = max(tally.images, 1)
    lat = tally.latencies
    return dict(
        images_per_s=tally.images / wall,
        p50_ms=1e3 * statistics.median(lat) if lat else float("nan"),
        p99_ms=1e3 * float(np.percentile(lat, 99)) if lat else float("nan"),
        accuracy=tally.correct / n if labels is not None else None,
        mean_compute_fraction=tally.fraction / n,
        wall_us_per_image=1e6 * wall / n,
        cpu_us_per_image=1e6 * cpu / n,
        engine_cpu_us_per_image=1e6 * engine_cpu / n,
        images=tally.images,
        clients_kind=kind,
    )


def _threads(
    engine: Any, plan: Any, x: torch.Tensor, labels: Any, size: int, clients: int, stop: float
) -> Tally:
    total, lock = Tally(), threading.Lock()

    def client(seed: int) -> None:
        rng, mine = np.random.default_rng(seed), Tally()
        while time.monotonic() < stop:
            i = int(rng.integers(0, len(x) - size + 1))
            t0 = time.monotonic()
            got = engine.submit(x[i : i + size], plan, t0 + 60.0).future.result(timeout=120)
            mine.add(got, time.monotonic() - t0, labels, i)
        with lock:
            total.merge(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total


def _asyncio(
    engine: Any, plan: Any, x: torch.Tensor, labels: Any, size: int, clients: int, stop: float
) -> Tally:
    import uvloop

    total = Tally()

    async def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop:
            i = int(rng.integers(0, len(x) - size + 1))
            t0 = time.monotonic()
            work = engine.submit(x[i : i + size], plan, t0 + 60.0)
            got = await asyncio.wait_for(asyncio.wrap_future(work.future), 120)
            total.add(got, time.monotonic() - t0, labels, i)

    async def every_client() -> None:
        await asyncio.gather(*(client(s) for s in range(clients)))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(every_client())
    return total


def load_images(path: Path | None, pkg: Any, data_dir: str | None) -> tuple[torch.Tensor, Any]:
    """``(x [N,3,H,W], labels [N] | None)``: a ``.npz`` (``x``, ``y``), the package's held test
    part, or random images for the stub."""
    if path is not None:
        data = np.load(path)
        return torch.from_numpy(data["x"]), data["y"]
    from benchmarks.engine_modes import held_test_images
    from service.images import ImageLimits, images_to_batch

    labelled = held_test_images(pkg, data_dir)
    if labelled is None:
        h, w = pkg.manifest.preprocessing.input_size
        return torch.randn(512, 3, h, w, generator=torch.Generator().manual_seed(0)), None
    pre = pkg.manifest.preprocessing
    return images_to_batch(labelled.blobs, pre, ImageLimits(2**30, 2**30)), np.array(labelled.labels)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row of this run, on the engine of the checkout on ``sys.path``."""
    from models.package import load_package
    from service.policy import resolve_plan

    torch.set_num_threads(args.threads)
    pkg = load_package(args.package)
    m = pkg.manifest
    if args.backend == "stub":
        h, w = m.preprocessing.input_size
        x = torch.randn(256, 3, h, w, generator=torch.Generator().manual_seed(0))
        labels = None
    else:
        x, labels = load_images(args.images_npz, pkg, args.data_dir)
        if args.limit_images:
            x = x[: args.limit_images]
            labels = None if labels is None else labels[: args.limit_images]
    from service.engine.backends import resolve_device

    device = resolve_device(args.device)
    rows = []
    for dtype in args.dtypes:
        for mode in args.modes:
            for budget, size, kind in itertools.product(args.budgets, args.images, args.clients_kind):
                engine = make_engine(pkg, args, mode, dtype, device)
                freeze_heap()
                plan = resolve_plan(m, budget=budget)
                load = (engine, plan, x, labels, size, args.clients)
                try:
                    closed_loop(*load, min(0.5, args.seconds), kind)
                    row = closed_loop(*load, args.seconds, kind)
                    if args.full_accuracy and labels is not None:
                        acc, fraction = full_accuracy(engine, plan, x, labels)
                        row.update(accuracy=acc, mean_compute_fraction=fraction)
                finally:
                    engine.stop()
                row = dict(
                    mode=mode, budget=budget, request_images=size, clients=args.clients,
                    backend=engine.backend.name, device=engine.backend.device,
                    # what ran: the CPU runs float32 whatever was asked
                    dtype=str(getattr(engine.backend, "dtype", dtype)).removeprefix("torch."),
                    **row,
                )  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="stub", choices=["stub", "torch", "onnxruntime", "auto"])
    ap.add_argument("--package", type=Path, default=Path("packages/default"))
    ap.add_argument(
        "--modes", nargs="+", default=["shrink"], choices=["run_to_end", "shrink", "rebatch"]
    )
    dtypes = ["float32", "float16", "bfloat16"]
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=dtypes,
                    help="torch compute dtypes (CUDA only; the CPU always runs float32)")  # fmt: skip
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5])
    ap.add_argument("--images", type=int, nargs="+", default=[1, 16], help="images per request")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument(
        "--clients-kind",
        nargs="+",
        default=["threads"],
        choices=["threads", "asyncio"],
        help="threads: each client a thread blocked on its future; asyncio: coroutines on one "
        "uvloop thread awaiting wrap_future, as the service's request path does",
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each row's load")
    ap.add_argument("--batch", type=int, help="max_batch_size (default: the device's)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--data-dir", help="where the package's training data is (default: its config's)")
    ap.add_argument("--images-npz", type=Path, help="preprocessed images: arrays x [N,3,H,W], y [N]")
    ap.add_argument("--limit-images", type=int, help="use only the first N test images")
    ap.add_argument("--save-images", type=Path, help="write the labelled test images as .npz, exit")
    ap.add_argument("--compare", help="another checkout: alternate its engine (before) with this one")
    ap.add_argument("--repeat", type=int, default=3, help="alternations of --compare")
    ap.add_argument(
        "--full-accuracy",
        action="store_true",
        help="accuracy and compute fraction over every test image (not the load's sample)",
    )
    ap.add_argument("--json", type=Path, help="write the rows here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    if args.compare:
        from benchmarks.engine_compare import compare

        rows = compare(args, argv)
    else:
        rows = measure(args)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
