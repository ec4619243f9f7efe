"""``python -m benchmarks`` end to end on a tiny trained package: real HTTP loads, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness.provenance import command
from benchmarks.pipeline import main


@pytest.fixture(scope="module")
def bench(int8_package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("out")
    argv = ["--quick", "--package", str(int8_package), "--out", str(out), "--no-grid",
            "--concurrency", "4", "--requests", "40", "--max-seconds", "3"]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_serving_measures_labelled_loads(bench: tuple[Path, dict[str, Any]]) -> None:
    _, results = bench
    loads = results["serving"]["loads"]
    closed = {r["budget"]: r for r in loads["closed_loop"]}
    assert 1.0 in closed and len(closed) >= 2
    for r in loads["closed_loop"] + loads["open_loop"]:
        assert r["requests"] > 0 and r["errors"] == 0
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert closed[1.0]["mean_compute_fraction"] == pytest.approx(1.0)
    assert closed[min(closed)]["mean_compute_fraction"] < 1.0  # a budget below 1 exits early
    assert {r["budget"] for r in loads["open_loop"]} == set(closed)
    assert "speedup_within_half_point" in results["serving"]["headline"]
    assert results["serving"]["package"]["name"] == "tiny-int8"


def test_outputs_written_and_rendered_again(bench: tuple[Path, dict[str, Any]]) -> None:
    out, results = bench
    md = (out / "BENCHMARKS.md").read_text()
    assert "Quick smoke run" in md and results["meta"]["commit"] in md
    assert "| closed | 1.0 |" in md and "Package served: `" in md
    assert (out / "serving.png").read_bytes()[:4] == b"\x89PNG"
    (out / "BENCHMARKS.md").unlink()
    assert main(["--report-only", "--out", str(out)]) == 0
    assert (out / "BENCHMARKS.md").read_text() == md


def test_a_package_without_its_training_config_is_refused(package_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="records no training config"):
        main(["--quick", "--package", str(package_dir), "--out", str(tmp_path)])


def test_the_recorded_command_reproduces_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert command("benchmarks.engine_modes", ["--seconds", "5", "--data-dir", "a b"]) == (
        "python -m benchmarks.engine_modes --seconds 5 --data-dir 'a b'"
    )
    # From the command line main() gets argv=None: the process's own arguments are recorded.
    monkeypatch.setattr("sys.argv", ["engine_modes.py", "--repeat", "1"])
    assert command("benchmarks.engine_modes", None).endswith("engine_modes --repeat 1")
    assert command("benchmarks", []) == "python -m benchmarks"


@pytest.mark.parametrize(
    ("precision", "results", "profiled"),
    [
        ("auto", "peers.json", True),
        ("fp32", "peers_fp32.json", False),
        ("int8", "peers_int8.json", False),
    ],
)
def test_bench_peers_hands_its_precision_to_the_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, results: str, profiled: bool
) -> None:
    """``ANYTIME_PRECISION=int8 make bench-peers``: the side by side runs at int8 into its own
    results file; the request-cost profile (of the service at its defaults) runs only at auto."""
    calls: dict[str, list[str]] = {}

    def record(name: str) -> Any:
        def suite(argv: list[str]) -> int:
            calls[name] = argv
            return 0

        return suite

    monkeypatch.setattr("benchmarks.side_by_side.main", record("peers"))
    monkeypatch.setattr("benchmarks.profile.main", record("profile"))
    monkeypatch.setenv("ANYTIME_PRECISION", precision)
    assert main(["--only", "peers", "--out", str(tmp_path)]) == 0
    argv = calls["peers"]
    assert argv[argv.index("--precision") + 1] == precision
    assert argv[argv.index("--out") + 1] == str(tmp_path / results)
    assert ("profile" in calls) == profiled
