"""int8 stages for a package: quantize, check against fp32, fit their own budget table.

``python -m training quantize --package DIR`` (and ``training export``, after writing the fp32
package) runs :func:`quantize_package`:

1. the int8 graphs (``models/quantize.py``), calibrated on the package's validation split;
2. the parity check: every exit's int8 logits against the fp32 graphs' on the held test split.
   The int8 graphs are kept only when, at every exit, the int8 class is the fp32 class on at
   least :data:`MIN_AGREEMENT` of the images and the accuracy is at most :data:`MAX_EXIT_LOSS`
   below fp32's; else :class:`QuantizationError` and the package is left as it was;
3. the int8 budget table: thresholds fitted on int8 validation logits (the confidences move),
   for the fp32 table's budgets, scored on the test split (``training/calibrate.py``);
4. the manifest, rewritten atomically with the int8 record and the new files' checksums.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.package import (
    MANIFEST,
    BudgetEntry,
    Int8Stages,
    Manifest,
    load_package,
    read_manifest,
    sha256_file,
)
from models.quantize import INT8_DIR, QuantizeConfig, quantize_stages, stage_logits

MIN_AGREEMENT = 0.97  # share of test images whose int8 class equals the fp32 class, per exit
MAX_EXIT_LOSS = 0.01  # accuracy at most 1 point below fp32's, per exit


class QuantizationError(RuntimeError):
    """The int8 graphs cannot be made, or fail the parity check (the message gives the figures)."""


def add_quantize_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "quantize",
        help="add int8 stage graphs and their budget table to an existing package",
        description="Quantize a package's per-stage ONNX graphs to int8 (ONNX Runtime static "
        "quantization, QDQ, per-channel weights, uint8 activations), calibrated on its validation "
        "split; check them against fp32 on its test split; fit their own budget table; record "
        "them in the manifest. Needs the package's training data (its recorded config).",
    )
    p.add_argument("--package", type=Path, required=True, help="package directory")
    p.add_argument("--data-dir", help="override data.path of the package's training config")
    p.add_argument(
        "--calibration-images",
        type=int,
        default=QuantizeConfig().calibration_images,
        help="validation images the activation ranges are measured on",
    )
    p.add_argument(
        "--method",
        choices=["minmax", "percentile", "entropy"],
        default="minmax",
        help="ONNX Runtime's calibration method for the activation ranges",
    )
    p.add_argument(
        "--fp32-below-channels",
        type=int,
        default=QuantizeConfig().fp32_below_channels,
        help="convolutions with fewer input or output channels stay fp32",
    )
    p.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=QuantizeConfig().reduce_range,
        help="7-bit weights (no int16 overflow on x86 CPUs without VNNI)",
    )
    p.set_defaults(handler=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    from training.checkpoint import CheckpointError

    config = QuantizeConfig(
        calibration_images=args.calibration_images,
        method=args.method,
        fp32_below_channels=args.fp32_below_channels,
        reduce_range=args.reduce_range,
    )
    try:
        manifest = quantize_package(args.package, config, args.data_dir)
    except QuantizationError as e:
        raise CheckpointError(str(e)) from None
    print(summary(manifest))
    return 0


def summary(m: Manifest) -> str:
    """Per exit and per budget: fp32 vs int8 accuracy on the test split."""
    assert m.int8 is not None
    fp32 = m.provenance.metrics.get("test_exit_accuracy") or [float("nan")] * m.num_exits
    lines = ["exit  fp32 acc  int8 acc  agreement"]
    for k, (a, b, g) in enumerate(zip(fp32, m.int8.exit_accuracy, m.int8.fp32_agreement, strict=True)):
        lines.append(f"{k:>4}  {100 * a:7.2f}%  {100 * b:7.2f}%  {100 * g:8.2f}%")
    lines.append("budget  fp32 acc  int8 acc  int8 compute")
    for f, q in zip(m.budgets, sorted(m.int8.budgets, key=lambda r: r.budget), strict=True):
        lines.append(
            f"{f.budget:6.2f}  {100 * (f.accuracy or 0):7.2f}%  {100 * (q.accuracy or 0):7.2f}%"
            f"  {q.expected_compute_fraction:12.3f}"
        )
    return "\n".join(lines)


def package_splits(m: Manifest, data_dir: str | None) -> dict[str, Any]:
    """The validation and test images ``[N, 3, H, W]`` (normalised) and labels of the split the
    package was trained on, checked against the test indices its provenance recorded."""
    from training.augment import normalize
    from training.config import recorded_config
    from training.data import load_dataset

    if m.provenance.training_config is None:
        raise QuantizationError("the package records no training config: its data is unknown")
    data = load_dataset(recorded_config(m.provenance.training_config, data_dir).data)
    recorded = (m.provenance.split or {}).get("test_indices_sha256")
    if recorded is not None and data.info.get("test_indices_sha256") != recorded:
        raise QuantizationError("the data split differs from the one the package was trained on")
    pre = m.preprocessing
    return {
        name: (normalize(split.x, pre.mean, pre.std).numpy(), split.y.numpy())
        for name, split in (("val", data.val), ("test", data.test))
    }


def quantize_package(
    root: Path, config: QuantizeConfig | None = None, data_dir: str | None = None
) -> Manifest:
    """Add int8 graphs and their budget table to the package directory ``root`` (module doc).

    Returns:
        The new manifest (also written to ``root/manifest.json``).
    Raises:
        QuantizationError: no fp32 graphs, no data, or the parity check failed.
    """
    config = config or QuantizeConfig()
    m = load_package(root).manifest
    if not m.onnx:
        raise QuantizationError(f"{root}: the package has no fp32 ONNX graphs to quantize")
    splits = package_splits(m, data_dir)
    names = [g.inputs for g in m.onnx]
    fp32 = [root / g.file for g in m.onnx]
    with tempfile.TemporaryDirectory(dir=root, prefix=".int8.") as tmp:
        made = quantize_stages(fp32, names, splits["val"][0], config, Path(tmp))
        logits = {
            (p, split): stage_logits(paths, names, x)
            for p, paths in (("fp32", fp32), ("int8", made))
            for split, (x, _) in splits.items()
        }
        y_val, y_test = splits["val"][1], splits["test"][1]
        fp32_acc = (logits["fp32", "test"].argmax(-1) == y_test).mean(1)
        int8_acc = (logits["int8", "test"].argmax(-1) == y_test).mean(1)
        agreement = (logits["fp32", "test"].argmax(-1) == logits["int8", "test"].argmax(-1)).mean(1)
        check_parity(fp32_acc, int8_acc, agreement)
        budgets = int8_budgets(m, logits["int8", "val"], y_val, logits["int8", "test"], y_test)
        files = [f"{INT8_DIR}/{p.name}" for p in made]
        (root / INT8_DIR).mkdir(parents=True, exist_ok=True)
        for src, rel in zip(made, files, strict=True):
            os.replace(src, root / rel)
    int8 = Int8Stages(
        onnx=[g.model_copy(update={"file": f}) for g, f in zip(m.onnx, files, strict=True)],
        budgets=budgets,
        exit_accuracy=[float(a) for a in int8_acc],
        fp32_agreement=[float(a) for a in agreement],
        quantization=config,
        onnxruntime=_ort_version(),
    )
    checksums = {**m.files, **{f: sha256_file(root / f) for f in files}}
    new = m.model_copy(update={"int8": int8, "files": checksums})
    Manifest.model_validate(new.model_dump())  # the completed manifest, checked before it lands
    write_manifest(root, new)
    return read_manifest(root)


def check_parity(fp32_acc: np.ndarray, int8_acc: np.ndarray, agreement: np.ndarray) -> None:
    """Raise :class:`QuantizationError` unless every exit meets the module's tolerances."""
    bad = [
        f"exit {k}: agreement {100 * g:.2f} %, accuracy {100 * a:.2f} % vs fp32 {100 * f:.2f} %"
        for k, (f, a, g) in enumerate(zip(fp32_acc, int8_acc, agreement, strict=True))
        if g < MIN_AGREEMENT or a < f - MAX_EXIT_LOSS
    ]
    if bad:
        raise QuantizationError(
            f"int8 graphs fail the parity check (agreement >= {100 * MIN_AGREEMENT:.0f} %, accuracy "
            f"loss <= {100 * MAX_EXIT_LOSS:.0f} point per exit): " + "; ".join(bad)
        )


def int8_budgets(
    m: Manifest, val: np.ndarray, y_val: np.ndarray, test: np.ndarray, y_test: np.ndarray
) -> list[BudgetEntry]:
    """The fp32 table's budgets, with thresholds fitted on int8 logits ``[K, N, C]``."""
    from training.calibrate import ExitScores, calibrate_budgets, row_to_dict
    from training.export import package_budgets

    fractions = torch.tensor([e.compute_fraction for e in m.exits], dtype=torch.float64)
    val_scores = ExitScores.from_logits(torch.from_numpy(val), torch.from_numpy(y_val))
    test_scores = ExitScores.from_logits(torch.from_numpy(test), torch.from_numpy(y_test))
    rows = calibrate_budgets(val_scores, test_scores, fractions, tuple(m.budget_values))
    if [r.budget for r in rows] != m.budget_values:
        raise QuantizationError("a budget of the fp32 table cannot be fitted on int8 logits")
    return package_budgets({"budgets": [row_to_dict(r) for r in rows]})


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Replace ``root/manifest.json`` atomically (a temporary file moved into place)."""
    tmp = root / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, root / MANIFEST)


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)
