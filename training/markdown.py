"""Markdown tables, the one format of every report (training's and the benchmarks')."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table: the header, its rule, one line per row (cells already formatted)."""

    def line(cells: Iterable[Any]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    return [line(head), "|" + "---|" * len(head), *map(line, rows)]
