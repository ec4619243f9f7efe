"""The serving benchmark runs end to end on a tiny package (slow: starts a server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.serving import main


@pytest.mark.slow
def test_benchmark_smoke(calibrated_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--package", str(calibrated_package), "--backends", "torch", "--batching", "on",
            "--budgets", "0.6,1.0", "--concurrency", "2", "--requests", "12", "--warmup-requests", "2",
            "--max-seconds", "10", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert [(r["mode"], r["budget"]) for r in rows] == [
        ("engine", 0.6), ("engine", 1.0), ("http", 0.6), ("http", 1.0)
    ]  # fmt: skip
    for r in rows:
        assert r["requests"] == 12 and r["images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert rows[1]["mean_compute_fraction"] == 1.0 > rows[0]["mean_compute_fraction"]
