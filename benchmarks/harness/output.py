"""What a suite writes: compact JSON results, markdown tables and PNG figures."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run headless
import matplotlib.pyplot as plt


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


@contextlib.contextmanager
def figure(
    path: Path,
    cols: int = 1,
    size: tuple[float, float] = (6, 4),
    dpi: int = 90,
    rect: tuple[float, float, float, float] = (0, 0, 1, 1),
) -> Iterator[tuple[Any, Any]]:
    """``(figure, axes)``: ``cols`` gridded axes side by side, laid out in ``rect`` and saved to
    ``path`` at the end of the block."""
    fig, axes = plt.subplots(1, cols, figsize=size)
    for ax in [axes] if cols == 1 else axes:
        ax.grid(alpha=0.3)
    yield fig, axes
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
