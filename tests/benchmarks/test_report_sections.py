"""BENCHMARKS.md, regenerated from the results, keeps the sections other commands write there."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.report
from training.factorial.report import HEADING


def test_regenerated_benchmarks_page_keeps_the_imta_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = tmp_path / "imta.md"
    section.write_text(f"{HEADING} (x)\n\nthe factorial\n")
    monkeypatch.setattr(benchmarks.report, "IMTA_SECTION", section)
    meta = {
        "quick": False,
        "command": "c",
        "machine": "m",
        "date": "d",
        "commit": "0",
        "full_command": "f",
    }
    text = benchmarks.report.render({"meta": meta}, tmp_path)
    assert f"{HEADING} (x)\n\nthe factorial\n" in text
