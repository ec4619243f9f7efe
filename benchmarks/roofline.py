"""How near the CPU's speed each stage runs: ``python -m benchmarks.roofline``.

For every stage graph of a package, fp32 and int8 (ONNX Runtime, one thread): milliseconds per
image at each batch size (CPU time of the thread that runs the session), achieved GFLOP/s (the
manifest's FLOPs of the stage over that time), and the fraction of the core's measured peak: a
GEMM of the same precision on the same core (fp32: an ORT ``MatMul``; int8: an ORT
``MatMulInteger`` of uint8 x int8, the pair the int8 stages use). At the largest batch, ORT's
profiler says where a stage's time goes (convolutions, concats, layout reorders,
quantize/dequantize, the rest, and the run's own overhead outside any node), and a line through
small batches gives the fixed cost of one call. ``--channels`` measures one 3x3 convolution at
several channel counts (multiples of the CPU's channel block or not). Writes a compact JSON
(``--json``) and prints the markdown tables of docs/engine.md.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.output import table, write_json
from benchmarks.harness.provenance import RESULTS
from models.package import load_package
from models.quantize import QuantizeConfig, quantize_stage, stage_feeds

IR_VERSION = 10  # what ONNX Runtime 1.2x reads; onnx writes newer by default
Feeds = dict[str, np.ndarray]

# ORT kernel name -> what the roofline reports it as (the rest is "other").
CATEGORIES = {
    "Conv": "conv", "FusedConv": "conv", "QLinearConv": "conv",
    "Concat": "concat", "QLinearConcat": "concat",
    "ReorderInput": "reorder", "ReorderOutput": "reorder", "Transpose": "reorder",
    "QuantizeLinear": "quant", "DequantizeLinear": "quant",
}  # fmt: skip


def session(model: str | bytes, profile: str | None = None) -> Any:
    """A one-thread CPU session (ORT's default ``ORT_ENABLE_ALL`` graph optimisations)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if profile is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def seconds_per_call(fn: Callable[[], Any], seconds: float, repeats: int = 7) -> float:
    """The best over ``repeats`` of the mean CPU time of ``fn`` over about ``seconds / repeats``.

    CPU time of the calling thread, where a one-thread ONNX Runtime session runs: on a shared
    machine, time spent descheduled is not the kernel's. The best repeat, not the median: this
    measures what the core can do, and the least disturbed repeat is the nearest to it."""
    fn()
    t0, n = time.thread_time(), 0
    while time.thread_time() - t0 < seconds / repeats or n < 2:
        fn()
        n += 1
    means = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        means.append((time.thread_time() - t0) / n)
    return min(means)


def gemm_model(int8: bool, n: int) -> bytes:
    """``[n, n] x [n, n]``: fp32 ``MatMul``, or ``MatMulInteger`` uint8 x int8 -> int32."""
    rng = np.random.default_rng(0)
    b: np.ndarray
    if int8:
        b = rng.integers(-127, 128, (n, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = rng.standard_normal((n, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "gemm", [helper.make_tensor_value_info("a", a_type, [n, n])],
        [helper.make_tensor_value_info("y", y_type, [n, n])], [numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)
    return model.SerializeToString()


def peak_gemm(int8: bool, seconds: float, sizes: Sequence[int] = (256, 512, 1024)) -> dict[str, Any]:
    """The best GFLOP/s (int8: GOP/s) of a square GEMM over ``sizes`` on one thread."""
    best: dict[str, Any] = {"gflops": 0.0}
    for n in sizes:
        s = session(gemm_model(int8, n))
        rng = np.random.default_rng(1)
        a = rng.integers(0, 256, (n, n), dtype=np.uint8) if int8 else rng.standard_normal((n, n))
        feed = {"a": a if int8 else a.astype(np.float32)}
        t = seconds_per_call(partial(s.run, None, feed), seconds)
        if 2 * n**3 / t / 1e9 > best["gflops"]:
            best = {"n": n, "gflops": 2 * n**3 / t / 1e9}
    return best


def profile_shares(model: str, feeds: Feeds, runs: int) -> dict[str, float]:
    """Share of a run's wall time per kernel category, plus ``overhead``: the run outside nodes."""
    with tempfile.TemporaryDirectory(prefix="anytime-prof-") as tmp:
        s = session(model, profile=f"{tmp}/p")
        for _ in range(runs + 1):  # the first run includes the session's lazy set-up: dropped
            s.run(None, feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    run_us = [e["dur"] for e in events if e.get("name") == "model_run"][1:]
    nodes: dict[str, float] = {}
    first_run_end = next(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > first_run_end:
            cat = CATEGORIES.get(e["args"]["op_name"], "other")
            nodes[cat] = nodes.get(cat, 0.0) + e["dur"]
    total = float(sum(run_us))
    shares = {k: v / total for k, v in sorted(nodes.items())}
    shares["overhead"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def stage_rows(pkg_path: Path, batches: Sequence[int], seconds: float) -> list[dict[str, Any]]:
    """Every stage at every batch, fp32 and int8 timed alternately; at the largest batch, where
    its time goes (profiler) and its fixed cost per call (:data:`SMALL_BATCHES`)."""
    pkg = load_package(pkg_path, verify_checksums=False)
    m = pkg.manifest
    if m.int8 is None:
        raise SystemExit(f"{pkg_path} has no int8 graphs: python -m training quantize --package ...")
    files = {"fp32": [g.file for g in m.onnx], "int8": [g.file for g in m.int8.onnx]}
    names = [g.inputs for g in m.onnx]
    sessions = {p: [session(str(pkg.root / f)) for f in fs] for p, fs in files.items()}
    flops = [e.flops for e in m.exits]
    stage_flops = [f - (flops[k - 1] if k else 0) for k, f in enumerate(flops)]
    h, w = m.preprocessing.input_size
    x = np.random.default_rng(0).standard_normal((max(batches), 3, h, w), dtype=np.float32)
    feeds = {b: next(stage_feeds(sessions["fp32"], names, x[:b], b)) for b in {*batches, *SMALL_BATCHES}}
    rows = []
    for b in batches:
        for k in range(m.num_exits):
            row: dict[str, Any] = {"stage": k, "batch": b, "mflops": stage_flops[k] / 1e6}
            for p in ("fp32", "int8"):  # alternated, so both see the same load
                s = sessions[p][k]
                ms = 1e3 * seconds_per_call(partial(s.run, None, feeds[b][k]), seconds) / b
                row[p] = {"ms_per_image": ms, "gflops": stage_flops[k] / ms / 1e6}
                if b == max(batches):
                    small = [feeds[n][k] for n in SMALL_BATCHES]
                    row[p]["fixed_us"] = fixed_us(s, small, seconds)
                    row[p]["profile"] = profile_shares(str(pkg.root / files[p][k]), feeds[b][k], 50)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


SMALL_BATCHES = (1, 2, 4)  # small enough that every batch's tensors stay in the caches


def fixed_us(s: Any, feeds: Sequence[Feeds], seconds: float) -> float:
    """Microseconds one call costs whatever its batch: the intercept of a least-squares line
    through (batch, CPU time per call) at :data:`SMALL_BATCHES` (``feeds``, in that order)."""
    t = [seconds_per_call(partial(s.run, None, f), seconds) for f in feeds]
    return 1e6 * float(np.polyfit(SMALL_BATCHES, t, 1)[1])


def conv_model(c: int, hw: int) -> onnx.ModelProto:
    """One 3x3 convolution, ``c`` -> ``c`` channels on ``hw x hw`` (pad 1), with bias and ReLU."""
    rng = np.random.default_rng(c)
    weight = numpy_helper.from_array(0.05 * rng.standard_normal((c, c, 3, 3), dtype=np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(c, np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", c, hw, hw])], [weight, bias],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)


def channel_rows(
    channels: Sequence[int], hw: int, batch: int, seconds: float, config: QuantizeConfig
) -> list[dict[str, Any]]:
    """One 3x3 conv per channel count: ms per call and GFLOP/s, fp32 and int8, alternated."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="anytime-conv-") as tmp:
        for c in channels:
            fp32, int8 = Path(tmp) / f"c{c}.onnx", Path(tmp) / f"c{c}_int8.onnx"
            onnx.save(conv_model(c, hw), fp32)
            x = np.random.default_rng(0).standard_normal((batch, c, hw, hw), dtype=np.float32)
            quantize_stage(fp32, int8, [{"x": x}], config)
            flops = 2 * batch * c * c * 9 * hw * hw
            row: dict[str, Any] = {"channels": c, "hw": hw, "batch": batch}
            for p, path in (("fp32", fp32), ("int8", int8)):
                s = session(str(path))
                t = seconds_per_call(partial(s.run, None, {"x": x}), seconds)
                row[p] = {"ms": 1e3 * t, "gflops": flops / t / 1e9}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/engine.md from a result: per stage, then the one-layer sweep."""
    peak = {p: result["peak"][p]["gflops"] for p in ("fp32", "int8")}
    stages: dict[int, list[dict[str, Any]]] = {}
    for r in result["stages"]:
        stages.setdefault(r["stage"], []).append(r)
    batches = " / ".join(str(r["batch"]) for r in stages[0])
    speed, where, cats = [], [], ["conv", "concat", "reorder", "quant", "other", "overhead"]
    for k, rows in stages.items():
        big = rows[-1]
        ms = {p: " / ".join(f"{r[p]['ms_per_image']:.3f}" for r in rows) for p in peak}
        gain = " / ".join(f"{r['fp32']['ms_per_image'] / r['int8']['ms_per_image']:.2f}x" for r in rows)
        rate = {p: f"{big[p]['gflops']:.0f}, {100 * big[p]['gflops'] / peak[p]:.0f} %" for p in peak}
        speed.append(
            (k, f"{rows[0]['mflops']:.1f}", ms["fp32"], ms["int8"], gain, rate["fp32"], rate["int8"])
        )
        shares = [
            " / ".join(f"{100 * big[p]['profile'].get(c, 0.0):.0f}" for p in peak) + " %" for c in cats
        ]
        where.append((k, *shares, " / ".join(f"{big[p]['fixed_us']:.0f}" for p in peak)))
    chans = result["channels"]
    sweep = [(f"{p} {unit}", *(f"{r[p]['gflops']:.0f}" for r in chans))
             for p, unit in (("fp32", "GFLOP/s"), ("int8", "GOP/s"))]  # fmt: skip
    sweep.append(("int8 gain", *(f"{r['fp32']['ms'] / r['int8']['ms']:.2f}x" for r in chans)))
    return "\n".join([
        *table(("stage", "MFLOPs", f"fp32 ms/image, batch {batches}", "int8 ms/image", "int8 gain",
                "fp32 GFLOP/s, % of peak", "int8 GOP/s, % of peak"), speed), "",
        *table(("stage, fp32 / int8", *cats, "fixed µs per call"), where), "",
        *table(("channels", *(str(r["channels"]) for r in chans)), sweep),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = suite_parser("benchmarks.roofline", __doc__, data=False)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument(
        "--channels", type=int, nargs="*", default=[6, 8, 16, 24, 32, 48, 58, 64, 80, 82, 96, 116, 128]
    )
    ap.add_argument("--hw", type=int, default=16, help="feature map side of the one-layer test")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing per measurement")
    ap.add_argument("--json", type=Path, default=RESULTS / "roofline.json")
    args = ap.parse_args(argv)
    peak = {p: peak_gemm(p == "int8", args.seconds) for p in ("fp32", "int8")}
    print(json.dumps(peak), flush=True)
    int8 = load_package(args.package, verify_checksums=False).manifest.int8
    config = int8.quantization if int8 is not None else QuantizeConfig()
    result = {
        "peak": peak,
        "stages": stage_rows(args.package, args.batches, args.seconds),
        "channels": channel_rows(args.channels, args.hw, max(args.batches), args.seconds, config),
    }
    write_json(args.json, result)
    print(markdown(result))


if __name__ == "__main__":
    main()
