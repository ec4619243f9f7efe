"""The ``evaluate``, ``calibrate`` and ``export`` subcommands (all read a run directory).

``evaluate`` writes ``logits.pt`` (every exit's logits on the validation and test splits),
``evaluation.json`` (per-exit accuracy and FLOPs) and ``training.png``; ``calibrate`` writes
``calibration.json`` and ``calibration.png``; ``export`` writes the model package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from models.flops import cumulative_flops
from training.checkpoint import LAST, CheckpointError, load_checkpoint, reached, rebuild_model
from training.config import ConfigError, recorded_config

LOGITS, EVALUATION, CALIBRATION = "logits.pt", "evaluation.json", "calibration.json"


def add_artifact_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="anytime accuracy of every exit on the validation and test splits",
        description="Evaluate a run's checkpoint: accuracy of every exit on the validation and the "
        "held test split against its cumulative FLOPs. Writes logits.pt, evaluation.json and "
        "training.png into the run directory.",
    )
    _common(ev)
    ev.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    ev.set_defaults(handler=run_evaluate)
    ca = sub.add_parser(
        "calibrate",
        help="fit exit thresholds for compute budgets (validation) and score them (test)",
        description="Fit confidence thresholds on the validation logits for each budget (MSDNet's "
        "geometric scheme and our direct optimisation), score both on the test logits, and write "
        "calibration.json and calibration.png. The package's budget table (export) is a set of "
        "distinct points of the validation accuracy-compute front, cheapest exit to full network "
        "(training/front.py). Runs evaluate first if logits.pt is missing.",
    )
    _common(ca)
    ca.add_argument(
        "--budgets",
        default="0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
        help="comma-separated compute fractions for the method comparison",
    )
    ca.add_argument(
        "--points",
        type=int,
        default=8,
        help="operating points in the package's budget table, full network included (default 8)",
    )
    ca.set_defaults(handler=run_calibrate)
    ex = sub.add_parser(
        "export",
        help="write a model package (manifest, safetensors, per-stage ONNX)",
        description="Write a model package from the run's checkpoint and calibration.json that "
        "models.package.load_package accepts and the service serves.",
    )
    _common(ex)
    ex.add_argument("--out", type=Path, required=True, help="package directory (or .tar file)")
    ex.add_argument("--name", default="msdnet-cifar10", help="package name")
    ex.add_argument("--default-budget", type=float, default=0.5, help="default budget (nearest row)")
    ex.add_argument("--no-onnx", action="store_true", help="skip the per-stage ONNX graphs")
    ex.add_argument(
        "--no-int8",
        action="store_true",
        help="skip the int8 stage graphs (python -m training quantize adds them later)",
    )
    ex.set_defaults(handler=run_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, required=True, help="the training run directory")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: RUN_DIR/last.pt)")
    p.add_argument("--data-dir", help="override data.path of the run's config")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    blob = load_checkpoint(args.checkpoint or args.run_dir / LAST)
    if not blob.get("complete", False):
        print(f"warning: checkpoint is from an unfinished run ({reached(blob)})", file=sys.stderr)
    return blob


def run_evaluate(args: argparse.Namespace) -> int:
    from training.data import load_dataset
    from training.loop import collect_logits, exit_accuracy
    from training.plots import plot_training

    blob = _checkpoint(args)
    cfg = recorded_config(blob["config"], args.data_dir)
    data = load_dataset(cfg.data)
    if data.info.get("test_indices_sha256") != blob.get("data_info", {}).get("test_indices_sha256"):
        raise ConfigError("the data split differs from the one the checkpoint was trained with")
    model = rebuild_model(blob)
    d = cfg.data
    val = collect_logits(model, data.val, d.mean, d.std, batch_size=args.batch_size)
    test = collect_logits(model, data.test, d.mean, d.std, batch_size=args.batch_size)
    logits = {
        "val": val,
        "val_y": data.val.y,
        "test": test,
        "test_y": data.test.y,
        "source": _source(blob),
    }
    torch.save(logits, args.run_dir / LOGITS)
    flops = cumulative_flops(model, d.input_size)
    val_acc, test_acc = exit_accuracy(val, data.val.y), exit_accuracy(test, data.test.y)
    report: dict[str, Any] = {
        "epochs": len(blob.get("history", [])),
        "complete": bool(blob.get("complete", False)),
        "val_exit_accuracy": val_acc,
        "test_exit_accuracy": test_acc,
        "exit_flops": flops,
        "exit_mult_adds_millions": [f / 2e6 for f in flops],
        "exit_compute_fraction": [f / flops[-1] for f in flops],
        "split": data.info,
    }
    (args.run_dir / EVALUATION).write_text(json.dumps(report, indent=2) + "\n")
    if blob.get("history"):
        plot_training(blob["history"], args.run_dir / "training.png")
    print("exit  MAdds(M)  fraction  val acc  test acc")
    for i, f in enumerate(flops):
        print(
            f"{i:>4}  {f / 2e6:8.2f}  {f / flops[-1]:8.3f}  {100 * val_acc[i]:6.2f}%"
            f"  {100 * test_acc[i]:7.2f}%"
        )
    return 0


def _source(blob: dict[str, Any]) -> list[Any]:
    """What identifies the weights behind ``logits.pt`` and ``calibration.json``: stage, epoch,
    architecture and a digest of the weights (another run's checkpoint of the same epoch, or an
    SWA run lengthened since, differs there)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(blob["model"].items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return [blob.get("stage"), blob.get("epoch"), blob["arch"]["name"], digest.hexdigest()[:16]]


def run_calibrate(args: argparse.Namespace) -> int:
    from training.calibrate import (
        ExitScores,
        calibrate_budgets,
        geometric_sweep,
        interpolate_accuracy,
        simulate,
    )
    from training.front import front_table, largest_drop
    from training.plots import plot_budgeted

    try:
        budgets = tuple(float(b) for b in args.budgets.split(","))
    except ValueError:
        raise ConfigError(f"--budgets must be comma-separated numbers, got {args.budgets!r}") from None
    current = _source(_checkpoint(args))
    saved = torch.load(args.run_dir / LOGITS) if (args.run_dir / LOGITS).is_file() else {}
    if saved.get("source") != current or not (args.run_dir / EVALUATION).is_file():
        run_evaluate(argparse.Namespace(**{**vars(args), "batch_size": 500}))
        saved = torch.load(args.run_dir / LOGITS)
    evaluation = json.loads((args.run_dir / EVALUATION).read_text())
    fractions = torch.tensor(evaluation["exit_compute_fraction"], dtype=torch.float64)
    val = ExitScores.from_logits(saved["val"], saved["val_y"])
    test = ExitScores.from_logits(saved["test"], saved["test_y"])
    rows = calibrate_budgets(val, test, fractions, budgets)
    front = front_table(val, test, fractions, args.points)
    curve = [simulate(test, fractions, t) for _, t, _ in geometric_sweep(val, fractions)]
    anytime = list(
        zip(evaluation["exit_compute_fraction"], evaluation["test_exit_accuracy"], strict=True)
    )
    result = {
        "method_note": "thresholds fitted on the validation split, scored on the test split",
        "source": current,
        "exit_compute_fraction": evaluation["exit_compute_fraction"],
        "exit_mult_adds_millions": evaluation["exit_mult_adds_millions"],
        "val_exit_accuracy": evaluation["val_exit_accuracy"],
        "test_exit_accuracy": evaluation["test_exit_accuracy"],
        "budgets": [_row(r, curve) for r in rows],
        "geometric_curve_test": [{"compute": p.compute, "accuracy": p.accuracy} for p in curve],
        "front": [asdict(r) for r in front],
    }
    (args.run_dir / CALIBRATION).write_text(json.dumps(result, indent=2) + "\n")
    plot_budgeted(
        anytime,
        curve,
        rows,
        args.run_dir / "calibration.png",
        full_mflops=evaluation["exit_mult_adds_millions"][-1],
    )
    print("budget | geometric: compute  acc | optimised: compute  acc | geometric curve at same compute")
    for r in rows:
        g, o = r.geometric_test, r.optimised_test
        same = interpolate_accuracy(curve, o.compute)
        print(
            f"{r.budget:6.2f} |      {g.compute:6.3f} {100 * g.accuracy:6.2f}% |"
            f"      {o.compute:6.3f} {100 * o.accuracy:6.2f}% | {100 * same:6.2f}%"
        )
    print(f"\nthe package's budget table: {len(front)} points of the validation front")
    print("budget | validation: compute  acc | test: compute  acc")
    for f in front:
        print(
            f"{f.budget:6.3f} |        {f.val.compute:6.3f} {100 * f.val.accuracy:6.2f}% |"
            f"  {f.test.compute:6.3f} {100 * f.test.accuracy:6.2f}%"
        )
    print(
        f"largest test-accuracy fall to the next larger budget: {100 * largest_drop(front):.2f} points"
    )
    return 0


def _row(row: Any, curve: list[Any]) -> dict[str, Any]:
    from training.calibrate import interpolate_accuracy, row_to_dict

    out = row_to_dict(row)
    out["geometric_curve_test_accuracy_at_optimised_compute"] = interpolate_accuracy(
        curve, row.optimised_test.compute
    )
    return out


def run_export(args: argparse.Namespace) -> int:
    from models.package import PackageError
    from training.export import export_package, load_calibration

    blob = _checkpoint(args)
    cal_path = args.run_dir / CALIBRATION
    if not cal_path.is_file():
        raise CheckpointError(f"{cal_path} not found: run `python -m training calibrate` first")
    calibration = load_calibration(cal_path)
    exported = _source(blob)  # digests every weight: once
    if calibration.get("source", exported) != exported:
        # Thresholds and accuracies fitted on other weights would ship with these.
        raise CheckpointError(
            f"{cal_path} was fitted on other weights ({calibration['source']}) than the checkpoint "
            f"exported ({exported}): run `python -m training calibrate` on it first"
        )
    try:
        out = export_package(
            blob,
            calibration,
            args.out,
            name=args.name,
            run_dir=args.run_dir,
            target_default=args.default_budget,
            export_onnx=not args.no_onnx,
        )
    except PackageError as e:
        raise CheckpointError(f"export failed: {e}") from None
    print(f"wrote model package {out}")
    if not (args.no_onnx or args.no_int8):
        add_int8(out, args.data_dir)
    return 0


def add_int8(package: Path, data_dir: str | None) -> None:
    """int8 graphs for a freshly exported package; one that fails the parity check keeps fp32 only."""
    from training.quantize import QuantizationError, quantize_package, summary

    if package.suffix == ".tar":
        print("int8 graphs are added to package directories only: skipped for a .tar")
        return
    try:
        print(summary(quantize_package(package, data_dir=data_dir)))
    except QuantizationError as e:
        print(f"warning: no int8 graphs: {e}", file=sys.stderr)
    except Exception as e:  # ONNX Runtime's quantization tools refuse some graphs; fp32 still ships
        print(
            f"warning: no int8 graphs: ONNX Runtime's quantization failed on this network "
            f"({type(e).__name__}: {e}); the fp32 package is complete",
            file=sys.stderr,
        )
