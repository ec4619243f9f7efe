"""The side-by-side ratios and their BENCHMARKS.md section, from hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import peers_section, render
from benchmarks.side_by_side import ratios


def _row(ips: float, acc: float | None = None, answers: int = 500) -> dict[str, Any]:
    return {"images_per_s": ips, "images_per_s_range": [ips - 1, ips + 1], "p50_ms": 100.0,
            "p99_ms": 200.0, "accuracy": acc, "answers": answers, "failed": 0,
            "body": "raw", "server_cpu_ms_per_image": 12.5}  # fmt: skip


ROWS = {
    "anytime HTTP, budget 1.0": _row(100.0, 0.90),
    "anytime HTTP, budget 0.5": _row(170.0, 0.896),
    "triton (full network)": _row(80.0, 0.90),
    "litserve (full network)": _row(110.0, 0.90),
    "engine, budget 1.0": _row(120.0),
    "engine, budget 0.5": _row(200.0),
}


def test_ratios_against_the_better_peer_and_the_engine() -> None:
    r = ratios(ROWS)
    assert r["better_peer"] == "litserve (full network)"
    assert r["http_b05_over_b10"] == pytest.approx(1.7)
    assert r["accuracy_b05_minus_b10_points"] == pytest.approx(-0.4)
    assert r["http_b05_over_better_peer"] == pytest.approx(170 / 110)
    assert r["http_b10_over_better_peer"] == pytest.approx(100 / 110)
    assert r["http_b10_over_engine_b10"] == pytest.approx(100 / 120)
    assert r["http_b05_over_engine_b05"] == pytest.approx(170 / 200)


def test_ratios_without_peers_leave_the_peer_ratios_out() -> None:
    rows = {k: v for k, v in ROWS.items() if "full network" not in k}
    r = ratios(rows)
    assert r["better_peer"] is None and "http_b10_over_better_peer" not in r
    assert r["http_b10_over_engine_b10"] == pytest.approx(100 / 120)


PEERS = {
    "meta": {"command": "python -m benchmarks.side_by_side", "date": "2026-01-01 00:00", "commit": "abc",
             "machine": "cpu", "uptime_before": "load 1.0", "uptime_after": "load 2.0"},
    "settings": {"connections": 16, "seconds": 5.0, "repeats": 3, "images": 2500,
                 "package": "packages/default", "service": "svc", "peers": "peers",
                 "package_accuracy": {"1.0": 0.9004, "0.5": 0.8952}},
    "rows": ROWS,
    "ratios": ratios(ROWS),
}  # fmt: skip


def test_section_shows_every_row_and_each_target_verdict() -> None:
    lines = peers_section(PEERS)
    text = "\n".join(lines)
    assert sum(line.startswith("| ") for line in lines) == 1 + len(ROWS)  # header, one per row
    assert "| anytime HTTP, budget 0.5 | fp32 | raw | 170.0 (169.0-171.0) |" in text
    assert "89.60 ± 1.37" in text  # 100 * sqrt(0.896 * 0.104 / 500)
    assert (
        "HTTP budget 0.5 / budget 1.0: 1.70; target >= 1.6: met; accuracy -0.40 ± 1.91 points in "
        "these runs, -0.52 points on the whole held test part (target within 0.5: **missed**)."
    ) in text
    assert (
        "HTTP budget 1.0 / the better peer: 0.91 (litserve (full network)); target >= 1.0: **missed**"
        in text
    )
    assert "budget 1.0: 90.04 %, budget 0.5: 89.52 %" in text
    assert "warm-up" not in text  # results measured before the window had none recorded


def test_section_states_the_warm_up_before_the_counted_window() -> None:
    peers = PEERS | {"settings": PEERS["settings"] | {"warmup_seconds": 2.0}}
    text = "\n".join(peers_section(peers))
    assert "5 s per run counted after 2 s of warm-up load (answers inside the window only)" in text


def test_section_names_the_runs_given_a_longer_warm_up() -> None:
    run = {"images_per_s": 170.0, "warmup_s": 2.0}
    rows = {k: v | {"runs": [run, run]} for k, v in ROWS.items()}
    rows["triton (full network)"] = rows["triton (full network)"] | {
        "runs": [run, run | {"warmup_s": 5.1}]
    }
    peers = PEERS | {"rows": rows, "settings": PEERS["settings"] | {"warmup_seconds": 2.0}}
    text = "\n".join(peers_section(peers))
    n = 2 * len(ROWS)
    assert (
        f"warm-up load (answers inside the window only; 1 of {n} runs were run again with a "
        "longer warm-up, up to 5.1 s, because wrk's threads were still starting)"
    ) in text


def test_section_only_when_results_exist(tmp_path: Path) -> None:
    meta = {
        "quick": False,
        "command": "c",
        "machine": "m",
        "date": "d",
        "commit": "x",
    }
    assert "## Side by side" not in render({"meta": meta}, tmp_path)
    (tmp_path / "peers.json").write_text(json.dumps(PEERS))
    prof = {"budget": 1.0, "images_per_s": 50.0, "seconds": 10.0, "method": "Method: sampled.",
            "rows": [{"component": "engine", "ms_per_image": 5.0, "share": 0.5}],
            "cpu_ms_per_image": 9.0}  # fmt: skip
    (tmp_path / "profile_components.json").write_text(json.dumps(prof))
    text = render({"meta": meta}, tmp_path)
    assert "\n## Side by side" in text and "| engine | 5.00 | 50.0% |" in text


def test_an_int8_sitting_says_so_in_its_heading_and_every_row(tmp_path: Path) -> None:
    meta = {"quick": False, "command": "c", "machine": "m", "date": "d", "commit": "x"}
    rows = {k: v | {"precision": "int8"} for k, v in ROWS.items()}
    peers = PEERS | {"rows": rows, "settings": PEERS["settings"] | {"precision": "int8"}}
    (tmp_path / "peers_int8.json").write_text(json.dumps(peers))
    text = render({"meta": meta}, tmp_path)
    assert "## Side by side: this service, Triton and LitServe (int8)" in text
    assert "(`ANYTIME_PRECISION=int8 make bench-peers`)" in text
    assert "| anytime HTTP, budget 0.5 | int8 | raw |" in text and "| fp32 |" not in text
