"""Engine modes and the SLO controller under one load: ``python -m benchmarks.engine_modes``.

Part 1: ``run_to_end`` vs ``shrink`` vs ``rebatch`` on the same closed-loop, mixed-budget load
(throughput, p50/p99, mean batch size per stage, FLOPs per image). Part 2: the controller off/on
under open-loop (Poisson) load at 1x, 1.5x and 2x what the full-budget server sustains (goodput
within the SLO, 429s, agreement with the final exit). The load drives the engine in-process (no
HTTP: the scheduler is what differs), bounded by ``--seconds`` per run.

Serves ``packages/default`` (``--package``). Images: the held test part of the package's own
training split (from its provenance) when that data is on disk, so accuracy is measured against
the labels; otherwise synthetic images, where only the agreement with the final exit's class on
the same image means anything.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.data import Labelled, held_test_images, sample_pngs
from benchmarks.harness.engine import (
    ControllerConfig,
    make_engine,
    preprocess,
    resolve_device,
    score,
    stage_stats,
    submit,
)
from benchmarks.harness.load import Answer, Tally, open_loop, run, thread_loop
from benchmarks.harness.output import table, write_json
from benchmarks.harness.provenance import RESULTS, Sitting, display, machine
from benchmarks.harness.stats import latency_ms, median_run
from models.package import ModelPackage, load_package

MODES = ("run_to_end", "shrink", "rebatch")
MEAN_IMAGES = 2.5  # requests of 1..4 images


class Load:
    """A pool of preprocessed images ``x [N, 3, H, W]``, the final exit's class of each (the
    agreement key) and, when the images are labelled, their true classes."""

    def __init__(self, pkg: ModelPackage, labelled: Labelled | None = None, n: int = 256) -> None:
        pre = pkg.manifest.preprocessing
        size = (pre.input_size[0], pre.input_size[1])
        self.x = preprocess(labelled.blobs if labelled else sample_pngs(n, seed=1, size=size), pre)
        self.labels = np.array(labelled.labels) if labelled else None
        with torch.no_grad():
            model = pkg.model.eval()
            self.final = np.concatenate([model(b)[-1].argmax(1).numpy() for b in self.x.split(500)])
        self.pkg = pkg

    def request(self, engine: Any, i: int, budgets: list[float | None], seed: int) -> Any:
        """Request ``i``: 1-4 random images at a random budget of ``budgets`` (None: the
        engine's default), submitted; returns the future and the images' indices."""
        rng = random.Random(seed * 1_000_003 + i)
        idx = [rng.randrange(len(self.x)) for _ in range(rng.randint(1, 4))]
        exit_plan = engine.plan(rng.choice(budgets))
        return submit(engine, self.x[idx], exit_plan, 30.0), idx

    def answer(self, got: list[Any], idx: list[int]) -> Answer:
        return score(got, None if self.labels is None else self.labels[idx], self.final[idx])


def closed(load: Load, engine: Any, seconds: float, clients: int, budgets: list[float | None]) -> Tally:
    """``clients`` threads, each waiting for its request before the next."""

    def call(i: int) -> Answer:
        future, idx = load.request(engine, i, budgets, 1)
        return load.answer(future.result(timeout=60), idx)

    return thread_loop(call, clients, 10**12, seconds)


def opened(load: Load, engine: Any, seconds: float, rate: float) -> Tally:
    """Poisson arrivals of ``rate`` requests/s, none pinning a budget."""

    async def send(i: int) -> Answer:
        future, idx = load.request(engine, i, [None], 7)
        return load.answer(await asyncio.wrap_future(future), idx)

    return run(open_loop(send, rate, 10**12, seconds, max_in_flight=10**6, seed=7))


def modes_part(
    load: Load, device: str, seconds: float, clients: int, repeat: int
) -> list[dict[str, Any]]:
    """Each mode ``repeat`` times, interleaved (a shared machine drifts); the median run is kept."""
    budgets: list[float | None] = [*load.pkg.manifest.budget_values]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for _, mode in ((r, m) for r in range(repeat) for m in MODES):
        engine = make_engine(load.pkg, device=device, mode=mode, batch=32, queue_size=4096)
        tally = closed(load, engine, seconds, clients, budgets)
        engine.stop()
        sizes, flops = stage_stats(engine, tally.images)
        s = tally.summary(load.labels is not None)
        runs[mode].append({"mode": mode, "images_per_s": s["images_per_s"], "p50_ms": s["p50_ms"],
                           "p99_ms": s["p99_ms"], "mean_batch_per_stage": [round(v, 2) for v in sizes],
                           "mflops_per_image": flops / 1e6, "agreement_with_final": s["agreement"],
                           "accuracy": s["accuracy"]})  # fmt: skip
        print(json.dumps(runs[mode][-1]), flush=True)
    return [median_run(runs[m]) for m in MODES]


def controller_part(
    load: Load, device: str, seconds: float, slo_s: float, queue: int, max_loss: float | None
) -> tuple[float, list[dict[str, Any]]]:
    engine = make_engine(load.pkg, device=device, mode="rebatch", queue_size=4096, default_budget=1.0)
    capacity = closed(load, engine, seconds, 8, [1.0]).summary()["images_per_s"]
    engine.stop()
    print(f"full-budget capacity: {capacity:.1f} images/s", flush=True)
    rows = []
    for mult, on in ((m, on) for m in (1.0, 1.5, 2.0) for on in (False, True)):
        ctl = ControllerConfig(
            p99_target_s=slo_s, window_s=1.0, interval_s=0.1, max_accuracy_loss=max_loss
        )
        engine = make_engine(load.pkg, device=device, mode="rebatch", queue_size=queue,
                             default_budget=1.0, controller=ctl if on else None)  # fmt: skip
        tally = opened(load, engine, seconds, mult * capacity / MEAN_IMAGES)
        engine.stop()
        s, rejected = tally.summary(load.labels is not None), tally.errors["QueueFullError"]
        rows.append({
            "load": mult, "controller": on, "offered_requests": s["requests"] + s["errors"],
            "goodput_per_s": sum(v <= slo_s for v in tally.latencies) / seconds,
            "p99_ms": latency_ms(tally.latencies)["p99_ms"], "rejections_429": rejected,
            "agreement_with_final": s["agreement"], "accuracy": s["accuracy"],
            "final_budget": engine.plan().budget,
            "offered_images_est": round(tally.images + rejected * MEAN_IMAGES),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return capacity, rows


def _acc(row: dict[str, Any]) -> str:
    return "n/a" if row.get("accuracy") is None else f"{100 * row['accuracy']:.2f}%"


def markdown(meta: dict[str, Any], modes: list[dict[str, Any]], ctl: list[dict[str, Any]]) -> str:
    lines = [
        "### Engine modes", "",
        f"Model: {meta['model']}; device {meta['device']}; {meta['seconds']} s per run; "
        f"{meta['note']}. Images: {meta['images']}. Reproduce: `{meta['command']}`.", "",
        f"Closed loop, {meta['clients']} clients, requests of 1-4 images with budgets mixed over the "
        f"package's table; median of {meta['repeat']} interleaved runs (all runs' images/s listed).", "",
        *table(("mode", "images/s (median; all)", "p50 ms", "p99 ms", "mean batch per stage",
                "MFLOPs/image", "accuracy", "agreement w/ final"),
               [(r["mode"], f"{r['images_per_s']:.1f}; {r['images_per_s_all']}", f"{r['p50_ms']:.1f}",
                 f"{r['p99_ms']:.1f}", " / ".join(map(str, r["mean_batch_per_stage"])),
                 f"{r['mflops_per_image']:.2f}", _acc(r), f"{r['agreement_with_final']:.3f}")
                for r in modes]),
        "", f"SLO controller (p99 target {meta['slo_ms']} ms, accuracy-loss cap "
        f"{meta.get('max_accuracy_loss')}, queue {meta['queue']} images, full-budget "
        f"capacity {meta['capacity']:.1f} images/s, requests pin no budget):", "",
        *table(("load", "controller", "goodput req/s within SLO", "p99 ms", "429s", "accuracy",
                "agreement w/ final", "budget at end"),
               [(f"{r['load']}x", "on" if r["controller"] else "off", f"{r['goodput_per_s']:.1f}",
                 f"{r['p99_ms']:.0f}", r["rejections_429"], _acc(r), f"{r['agreement_with_final']:.3f}",
                 r["final_budget"]) for r in ctl]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = suite_parser("benchmarks.engine_modes", __doc__)
    add = ap.add_argument
    add("--seconds", type=float, default=6.0, help="length of each load run")
    add("--clients", type=int, default=32, help="closed-loop clients (modes part)")
    add("--slo-ms", type=float, default=300.0, help="p99 target of the controller")
    add("--queue", type=int, default=128, help="queue bound (images), controller part")
    add(
        "--max-accuracy-loss",
        type=lambda v: None if v == "none" else float(v),
        default=0.01,
        help="controller floor: budget rows at most this below the full budget's test accuracy "
        "(default 0.01 = 1 point; 'none': every row, e.g. for a package without measured accuracy)",
    )
    add("--repeat", type=int, default=3, help="runs per mode (median kept)")
    add("--threads", type=int, default=1, help="torch intra-op threads")
    add("--out", type=Path, default=RESULTS, help="where the .json and .md go")
    add("--synthetic-images", action="store_true", help="synthetic images even if test data exists")
    add("--note", help="what else ran on the machine (default: the CPU and torch build)")
    args = ap.parse_args(argv)  # fmt: skip
    torch.set_num_threads(args.threads)
    device, sitting = resolve_device("auto"), Sitting("benchmarks.engine_modes", argv)
    pkg = load_package(args.package)
    labelled = None if args.synthetic_images else held_test_images(pkg.manifest, args.data_dir)
    load = Load(pkg, labelled)
    modes = modes_part(load, device, args.seconds, args.clients, args.repeat)
    capacity, ctl = controller_part(load, device, args.seconds, args.slo_ms / 1e3, args.queue,
                                    args.max_accuracy_loss)  # fmt: skip
    origin = display(args.package)
    meta = {
        "model": f"{pkg.manifest.name} ({pkg.manifest.num_exits} exits, {origin})", "device": device,
        "seconds": args.seconds, "note": args.note or machine(), "slo_ms": args.slo_ms,
        "max_accuracy_loss": args.max_accuracy_loss, "queue": args.queue, "clients": args.clients,
        "repeat": args.repeat, "capacity": capacity, "command": sitting.command,
        "images": f"the package's held test part ({len(labelled.labels)} labelled images)" if labelled
        else "synthetic (no labels: accuracy n/a)",
    }  # fmt: skip
    stem = "engine_modes" if device == "cpu" else f"engine_modes_{device}"
    write_json(args.out / f"{stem}.json", {"meta": meta, "modes": modes, "controller": ctl})
    (args.out / f"{stem}.md").write_text(md := markdown(meta, modes, ctl))
    print(md)


if __name__ == "__main__":
    main()
