"""Candidate architectures side by side: per-exit multiply-adds and ONNX Runtime time per stage.

``python -m training.architectures --config A.yaml B.yaml`` builds each config's model (its
``model`` section; weights do not change the time), exports its stages to ONNX as a package
would, and runs them one after the other on a batch of images with ONNX Runtime on one thread,
the way the service runs a batch that nobody leaves early. For every exit it prints the
cumulative multiply-adds, the stage's milliseconds per image and the cumulative time as a share
of the full pass, beside the FLOPs share: where the two differ, the FLOPs a budget saves are not
the milliseconds it saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models import create_model
from models.flops import cumulative_flops
from models.multi_exit import MultiExitNet
from models.onnx_export import export_stages
from training.config import ConfigError, load_config


@dataclass(frozen=True)
class ExitCost:
    exit: int
    mult_adds_millions: float  # cumulative, one 32x32 image
    stage_ms_per_image: float
    cumulative_ms_share: float  # of the full pass
    flops_share: float


def stage_times(
    model: MultiExitNet, input_size: tuple[int, int], batch: int, threads: int, repeats: int
) -> list[float]:
    """Median seconds per image of each stage (ONNX Runtime, CPU, ``threads`` threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        graphs = export_stages(model, input_size, Path(tmp))
        sessions = [
            ort.InferenceSession(str(Path(tmp) / g.file), opts, providers=["CPUExecutionProvider"])
            for g in graphs
        ]
    rng = np.random.default_rng(0)
    image = rng.standard_normal((batch, 3, *input_size), dtype=np.float32)
    runs: list[list[float]] = [[] for _ in sessions]
    for r in range(repeats + 1):  # the first round warms up
        state = [image]
        for k, (sess, g) in enumerate(zip(sessions, graphs, strict=True)):
            feed = dict(zip(g.inputs, state, strict=True))
            start = time.perf_counter()
            out = sess.run(None, feed)
            if r > 0:
                runs[k].append((time.perf_counter() - start) / batch)
            state = out[:-1]
    return [statistics.median(t) for t in runs]


def exit_costs(
    model: MultiExitNet, input_size: tuple[int, int] = (32, 32), batch: int = 32,
    threads: int = 1, repeats: int = 20,
) -> list[ExitCost]:  # fmt: skip
    """The table's rows for one model (module docstring)."""
    flops = cumulative_flops(model, input_size)
    times = stage_times(model, input_size, batch, threads, repeats)
    total = sum(times)
    rows, elapsed = [], 0.0
    for k, (f, t) in enumerate(zip(flops, times, strict=True)):
        elapsed += t
        rows.append(ExitCost(k, f / 2e6, 1e3 * t, elapsed / total, f / flops[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.architectures",
        description="Per-exit multiply-adds and ONNX Runtime milliseconds per stage of each "
        "config's model (untrained weights: the time does not depend on them).",
    )
    p.add_argument("--config", type=Path, nargs="+", required=True, help="training configs (YAML)")
    p.add_argument("--batch", type=int, default=32, help="images per stage run (default 32)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per stage; the median")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out: dict[str, list[dict[str, float]]] = {}
    for path in args.config:
        try:
            cfg = load_config(path)
        except ConfigError as e:
            p.error(str(e))
        model = create_model(cfg.model.name, **cfg.model.kwargs).eval()
        rows = exit_costs(model, cfg.data.input_size, args.batch, args.threads, args.repeats)
        out[str(path)] = [asdict(r) for r in rows]
        print(f"{path} ({cfg.model.name}), batch {args.batch}, {args.threads} thread(s)")
        print("exit | M mult-adds | stage ms/image | time share | FLOPs share")
        for r in rows:
            print(
                f"{r.exit:4d} | {r.mult_adds_millions:11.1f} | {r.stage_ms_per_image:14.3f} |"
                f" {r.cumulative_ms_share:10.3f} | {r.flops_share:11.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
