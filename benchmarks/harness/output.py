"""What a suite writes: compact JSON results and markdown tables (PNG figures: training.plots.figure)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> Path:
    """``data`` as one line of JSON (results are read by the reports, not by people)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table: the header, its rule, one line per row (cells already formatted)."""

    def line(cells: Iterable[Any]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    return [line(head), "|" + "---|" * len(head), *map(line, rows)]
