"""``python -m benchmarks.engine_modes`` end to end on the tiny package, in short runs."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.engine_modes import main


def test_engine_modes_benchmark_smoke(calibrated_package: Path, tmp_path: Path) -> None:
    main(["--package", str(calibrated_package), "--seconds", "0.4", "--repeat", "1", "--clients", "4",
          "--max-accuracy-loss", "none",
          "--out", str(tmp_path)])  # fmt: skip
    data = json.loads((tmp_path / "engine_modes.json").read_text())
    modes = {r["mode"]: r for r in data["modes"]}
    assert list(modes) == ["run_to_end", "shrink", "rebatch"]
    for r in modes.values():
        assert r["images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    # run_to_end runs every image through every stage; the early-exit modes spend less.
    batches = modes["run_to_end"]["mean_batch_per_stage"]
    assert batches == [batches[0]] * len(batches)
    assert modes["shrink"]["mflops_per_image"] < modes["run_to_end"]["mflops_per_image"]
    assert modes["rebatch"]["mflops_per_image"] < modes["run_to_end"]["mflops_per_image"]
    rows = data["controller"]
    assert [(r["load"], r["controller"]) for r in rows] == [
        (m, on) for m in (1.0, 1.5, 2.0) for on in (False, True)
    ]
    assert all(0.0 <= r["agreement_with_final"] <= 1.0 for r in rows)
    assert all(r["final_budget"] == 1.0 for r in rows if not r["controller"])
    assert "| rebatch |" in (tmp_path / "engine_modes.md").read_text()
