"""Engine modes and the SLO controller under one load: ``python -m benchmarks.engine_modes``.

Part 1: ``run_to_end`` vs ``shrink`` vs ``rebatch`` on the same closed-loop, mixed-budget load
(throughput, p50/p99, mean batch size per stage, FLOPs per image). Part 2: the controller off/on
under open-loop (Poisson) load at 1x, 1.5x and 2x what the full-budget server sustains (goodput
within the SLO, 429s, agreement with the final exit). The load drives the engine in-process (no
HTTP: the scheduler is what differs), bounded by ``--seconds`` per run.

Uses ``packages/default`` when it exists, else an untrained 5-exit ``msdnet`` whose budget table
is fitted on synthetic images (``benchmarks/workload.py``). Images: the held test part of the
package's own training split (from its provenance) when that data is on disk, so accuracy is
measured against the labels; otherwise synthetic images, where only the agreement with the final
exit's class on the same image means anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.loadgen import Labelled, labelled_test_split
from benchmarks.pipeline import machine, reproduce_command
from benchmarks.workload import calibrated_package, sample_pngs
from models.package import ModelPackage, load_package
from service.engine import EngineConfig, ModelEngine, build_engine
from service.engine.backends import TorchBackend, resolve_device
from service.engine.controller import ControllerConfig
from service.errors import QueueFullError
from service.images import ImageLimits, images_to_batch
from service.metrics import ServiceMetrics

RESULTS = Path(__file__).parent / "results"


@dataclass
class Run:
    """What one load run measured."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    images: int = 0
    agree: int = 0
    correct: int = 0
    rejected: int = 0
    timed_out: int = 0
    labelled: bool = False  # images carry true classes: accuracy is measured
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, latency: float, n: int, agree: int, correct: int) -> None:
        with self.lock:
            self.latencies.append(latency)
            self.images += n
            self.agree += agree
            self.correct += correct

    def accuracy(self) -> float | None:
        """Share of answered images whose class is the label (None without labels)."""
        return self.correct / max(self.images, 1) if self.labelled else None


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def make_engine(pkg: ModelPackage, mode: str, device: str, **cfg: Any) -> ModelEngine:
    config = EngineConfig(mode=mode, **cfg)  # type: ignore[arg-type]
    return build_engine(pkg, "torch", config, ServiceMetrics(), device=device, buckets=())


def stage_stats(engine: ModelEngine, answered: int) -> tuple[list[float], float]:
    """Mean batch size per stage and FLOPs per answered image (from the stage-run counts)."""
    reg, name = engine.metrics.registry, engine.name
    flops = [0, *engine.flops]
    sizes, spent = [], 0.0
    for k in range(engine.num_exits):
        labels = {"model": name, "stage": str(k)}
        total = reg.get_sample_value("anytime_batch_size_sum", labels) or 0.0
        runs = reg.get_sample_value("anytime_batch_size_count", labels) or 0.0
        sizes.append(total / runs if runs else 0.0)
        spent += total * (flops[k + 1] - flops[k])
    return sizes, spent / max(answered, 1)


def held_test_images(pkg: ModelPackage, data_dir: str | None = None) -> Labelled | None:
    """The held test part of the split ``pkg`` was trained on, as PNGs with labels; ``None`` when
    the package has no training config (untrained, tests) or its data is not on disk."""
    from training.data import DataError

    raw = pkg.manifest.provenance.training_config
    if raw is None:
        return None
    try:
        return labelled_test_split(raw, data_dir)
    except DataError as e:
        print(f"no labelled test images ({e}); using synthetic images", flush=True)
        return None


class Load:
    """A pool of preprocessed images, the final exit's class of each (the agreement key) and,
    when the images are labelled, their true classes."""

    def __init__(self, pkg: ModelPackage, labelled: Labelled | None = None, n: int = 256) -> None:
        pre = pkg.manifest.preprocessing
        size = tuple(pre.input_size)
        blobs = labelled.blobs if labelled else sample_pngs(n, seed=1, size=size)  # type: ignore[arg-type]
        self.x = images_to_batch(blobs, pre, ImageLimits(2**30, 2**30))
        self.labels = np.array(labelled.labels) if labelled else None
        with torch.no_grad():
            model = pkg.model.eval()
            self.final = np.concatenate([model(b)[-1].argmax(1).numpy() for b in self.x.split(500)])
        self.pkg = pkg

    def run(self, seconds: float) -> Run:
        return Run(seconds, labelled=self.labels is not None)

    def submit(self, engine: ModelEngine, run: Run, budget: float | None, rng: random.Random) -> Any:
        n = rng.randint(1, 4)
        idx = [rng.randrange(len(self.x)) for _ in range(n)]
        plan = engine.plan(budget)
        t0 = time.monotonic()
        try:
            work = engine.submit(self.x[idx], plan, t0 + 30.0)
        except QueueFullError:
            with run.lock:
                run.rejected += 1
            return None

        def finish(f: Any) -> None:
            if f.cancelled() or f.exception() is not None:
                with run.lock:
                    run.timed_out += 1
                return
            got = np.array([r.probs.argmax() for r in f.result()])
            right = int((got == self.labels[idx]).sum()) if self.labels is not None else 0
            run.done(time.monotonic() - t0, n, int((got == self.final[idx]).sum()), right)

        work.future.add_done_callback(finish)
        return work.future


def closed_loop(
    load: Load, engine: ModelEngine, seconds: float, clients: int, budgets: list[float | None]
) -> Run:
    run = load.run(seconds)
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            fut = load.submit(engine, run, rng.choice(budgets), rng)
            if fut is not None:
                fut.result(timeout=60)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return run


def open_loop(load: Load, engine: ModelEngine, seconds: float, rate: float) -> Run:
    """Poisson arrivals of ``rate`` requests/s, none pinning a budget."""
    run, rng = load.run(seconds), random.Random(7)
    t, end, futures = time.monotonic(), time.monotonic() + seconds, []
    while t < end:
        t += rng.expovariate(rate)
        time.sleep(max(0.0, t - time.monotonic()))
        futures.append(load.submit(engine, run, None, rng))
    for f in futures:
        if f is not None:
            with contextlib.suppress(Exception):  # timeouts are counted by the callback
                f.result(timeout=60)
    time.sleep(0.05)  # the last done-callbacks
    return run


def modes_part(
    load: Load, device: str, seconds: float, clients: int, repeat: int
) -> list[dict[str, Any]]:
    """Each mode ``repeat`` times, interleaved (a shared machine drifts); the median run is kept."""
    budgets: list[float | None] = [*load.pkg.manifest.budget_values]
    modes = ("run_to_end", "shrink", "rebatch")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(repeat):
        for mode in modes:
            engine = make_engine(load.pkg, mode, device, max_batch_size=32, queue_size=4096)
            run = closed_loop(load, engine, seconds, clients, budgets)
            engine.stop()
            sizes, flops = stage_stats(engine, run.images)
            runs[mode].append(
                dict(
                    mode=mode,
                    images_per_s=run.images / seconds,
                    p50_ms=pct(run.latencies, 50),
                    p99_ms=pct(run.latencies, 99),
                    mean_batch_per_stage=[round(s, 2) for s in sizes],
                    mflops_per_image=flops / 1e6,
                    agreement_with_final=run.agree / max(run.images, 1),
                    accuracy=run.accuracy(),
                )
            )
            print(json.dumps(runs[mode][-1]), flush=True)
    rows = []
    for mode in modes:
        ordered = sorted(runs[mode], key=lambda r: r["images_per_s"])
        median = dict(ordered[len(ordered) // 2])
        median["images_per_s_all"] = [round(r["images_per_s"], 1) for r in runs[mode]]
        rows.append(median)
    return rows


def controller_part(
    load: Load, device: str, seconds: float, slo_s: float, queue: int, max_loss: float | None
) -> tuple[float, list[dict[str, Any]]]:
    mode = "rebatch"
    engine = make_engine(load.pkg, mode, device, queue_size=4096, default_budget=1.0)
    capacity = closed_loop(load, engine, seconds, 8, [1.0]).images / seconds
    engine.stop()
    print(f"full-budget capacity: {capacity:.1f} images/s", flush=True)
    rows = []
    for mult in (1.0, 1.5, 2.0):
        rate = mult * capacity / 2.5  # requests of 1..4 images: 2.5 on average
        for on in (False, True):
            ctl = None
            if on:
                ctl = ControllerConfig(
                    p99_target_s=slo_s, window_s=1.0, interval_s=0.1, max_accuracy_loss=max_loss
                )
            engine = make_engine(
                load.pkg, mode, device, queue_size=queue, default_budget=1.0, controller=ctl
            )
            run = open_loop(load, engine, seconds, rate)
            engine.stop()
            offered = run.images + run.rejected * 2.5
            rows.append(
                dict(
                    load=mult,
                    controller=on,
                    offered_requests=len(run.latencies) + run.rejected + run.timed_out,
                    goodput_per_s=sum(v <= slo_s for v in run.latencies) / seconds,
                    p99_ms=pct(run.latencies, 99),
                    rejections_429=run.rejected,
                    agreement_with_final=run.agree / max(run.images, 1),
                    accuracy=run.accuracy(),
                    final_budget=engine.plan().budget,
                    offered_images_est=round(offered),
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    return capacity, rows


def _acc(row: dict[str, Any]) -> str:
    return "n/a" if row.get("accuracy") is None else f"{100 * row['accuracy']:.2f}%"


def markdown(meta: dict[str, Any], modes: list[dict[str, Any]], ctl: list[dict[str, Any]]) -> str:
    lines = [
        "### Engine modes",
        "",
        f"Model: {meta['model']}; device {meta['device']}; {meta['seconds']} s per run; "
        f"{meta['note']}. Images: {meta['images']}. Reproduce: `{meta['command']}`.",
        "",
        f"Closed loop, {meta['clients']} clients, requests of 1-4 images with budgets mixed over the "
        f"package's table; median of {meta['repeat']} interleaved runs (all runs' images/s listed).",
        "",
        "| mode | images/s (median; all) | p50 ms | p99 ms | mean batch per stage | MFLOPs/image "
        "| accuracy | agreement w/ final |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in modes:
        lines.append(
            f"| {r['mode']} | {r['images_per_s']:.1f}; {r['images_per_s_all']} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{' / '.join(str(s) for s in r['mean_batch_per_stage'])} | {r['mflops_per_image']:.2f} | "
            f"{_acc(r)} | {r['agreement_with_final']:.3f} |"
        )
    lines += [
        "",
        f"SLO controller (p99 target {meta['slo_ms']} ms, accuracy-loss cap "
        f"{meta.get('max_accuracy_loss')}, queue {meta['queue']} images, full-budget "
        f"capacity {meta['capacity']:.1f} images/s, requests pin no budget):",
        "",
        "| load | controller | goodput req/s within SLO | p99 ms | 429s | accuracy "
        "| agreement w/ final | budget at end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ctl:
        lines.append(
            f"| {r['load']}x | {'on' if r['controller'] else 'off'} | {r['goodput_per_s']:.1f} | "
            f"{r['p99_ms']:.0f} | {r['rejections_429']} | {_acc(r)} | "
            f"{r['agreement_with_final']:.3f} | {r['final_budget']} |"
        )
    return "\n".join(lines) + "\n"


def stage_costs(pkg: ModelPackage, device: str, sizes: tuple[int, ...] = (4, 8, 12, 16, 20, 32)) -> None:
    """Print ms per image of each stage at each batch size (median of 7): where batching pays."""
    backend = TorchBackend(pkg.model, device)
    h, w = pkg.manifest.preprocessing.input_size
    for n in sizes:
        state: tuple[torch.Tensor, ...] = (torch.randn(n, 3, h, w),)
        row = []
        for k in range(pkg.manifest.num_exits):
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                out, logits = backend.run_stage(k, state)
                logits.cpu()
                times.append(time.perf_counter() - t0)
            row.append(sorted(times)[3] / n * 1e3)
            state = out
        print(f"batch {n:3d}: ms/image per stage " + " ".join(f"{v:.2f}" for v in row), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each load run")
    ap.add_argument("--clients", type=int, default=32, help="closed-loop clients (modes part)")
    ap.add_argument("--slo-ms", type=float, default=300.0, help="p99 target of the controller")
    ap.add_argument("--queue", type=int, default=128, help="queue bound (images), controller part")
    ap.add_argument(
        "--max-accuracy-loss",
        type=lambda v: None if v == "none" else float(v),
        default=0.01,
        help="controller floor: budget rows at most this below the full budget's test accuracy "
        "(default 0.01 = 1 point; 'none': every row, e.g. for a package without measured accuracy)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode (median kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the .json and .md go")
    ap.add_argument(
        "--package", type=Path, help="package to serve (default: packages/default or msdnet)"
    )
    ap.add_argument("--data-dir", help="where the package's training data is (default: its config's)")
    ap.add_argument(
        "--synthetic-images", action="store_true", help="synthetic images even if test data exists"
    )
    ap.add_argument("--stage-costs", action="store_true", help="only time each stage per batch size")
    ap.add_argument("--note", help="what else ran on the machine (default: the CPU and torch build)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    default = Path("packages/default")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.package or (
            default if default.exists() else calibrated_package(Path(tmp), "msdnet", [0.3, 0.5, 0.7])
        )
        pkg = load_package(path)
        if args.stage_costs:
            stage_costs(pkg, device)
            return
        labelled = None if args.synthetic_images else held_test_images(pkg, args.data_dir)
        load = Load(pkg, labelled)
        modes = modes_part(load, device, args.seconds, args.clients, args.repeat)
        capacity, ctl = controller_part(
            load, device, args.seconds, args.slo_ms / 1e3, args.queue, args.max_accuracy_loss
        )
    fitted = args.package is None and path != default
    origin = "untrained, budget table fitted on synthetic images" if fitted else str(path)
    meta = dict(
        model=f"{pkg.manifest.name} ({pkg.manifest.num_exits} exits, {origin})",
        device=device,
        seconds=args.seconds,
        note=args.note or machine(),
        slo_ms=args.slo_ms,
        max_accuracy_loss=args.max_accuracy_loss,
        queue=args.queue,
        clients=args.clients,
        repeat=args.repeat,
        images=(
            f"the package's held test part ({len(labelled.labels)} labelled images)"
            if labelled
            else "synthetic (no labels: accuracy n/a)"
        ),
        capacity=capacity,
        command=reproduce_command("benchmarks.engine_modes", argv),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "engine_modes" if device == "cpu" else f"engine_modes_{device}"
    (args.out / f"{stem}.json").write_text(
        json.dumps(dict(meta=meta, modes=modes, controller=ctl), indent=2)
    )
    md = markdown(meta, modes, ctl)
    (args.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
