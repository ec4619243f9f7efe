"""``python -m benchmarks.engine_speed`` on the tiny package, in short runs."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.engine_speed import main


def test_the_stub_backend_measures_host_overhead(calibrated_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    main(["--package", str(calibrated_package), "--seconds", "0.3", "--clients", "3",
          "--images", "1", "4", "--budgets", "0.6", "1.0", "--clients-kind", "threads", "asyncio",
          "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())
    assert [(r["budget"], r["request_images"], r["clients_kind"]) for r in rows] == [
        (b, n, kind) for b in (0.6, 1.0) for n in (1, 4) for kind in ("threads", "asyncio")
    ]
    for r in rows:
        assert r["backend"] == "stub" and r["images"] > 0 and r["cpu_us_per_image"] > 0
        assert r["p99_ms"] >= r["p50_ms"] > 0 and r["accuracy"] is None
        # The engine's worker threads are part of the process: their CPU is a share of its CPU.
        assert 0 < r["engine_cpu_us_per_image"] < r["cpu_us_per_image"]
    # Budget 1.0 runs every image to the last exit; 0.6 lets the stub's confident rows leave.
    assert all(r["mean_compute_fraction"] == 1.0 for r in rows if r["budget"] == 1.0)
    assert all(r["mean_compute_fraction"] < 1.0 for r in rows if r["budget"] == 0.6)


def test_a_real_backend_reports_accuracy_on_saved_images(
    calibrated_package: Path, tmp_path: Path
) -> None:
    import numpy as np
    import torch

    images = tmp_path / "images.npz"
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.savez(images, x=x.numpy(), y=np.zeros(40, dtype=np.int64))
    out = tmp_path / "rows.json"
    main(["--package", str(calibrated_package), "--backend", "onnxruntime", "--seconds", "0.3",
          "--clients", "2", "--images", "2", "--budgets", "0.6", "--modes", "rebatch",
          "--images-npz", str(images), "--full-accuracy", "--json", str(out)])  # fmt: skip
    (row,) = json.loads(out.read_text())
    assert row["mode"] == "rebatch" and row["backend"] == "onnxruntime"
    assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 < row["mean_compute_fraction"] <= 1.0
