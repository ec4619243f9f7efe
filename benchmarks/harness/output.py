"""What a suite writes: compact JSON results and markdown tables (PNG figures: training.plots.figure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.markdown import table  # the one table format; re-exported for the suites

__all__ = ["table", "write_json"]


def write_json(path: Path, data: Any) -> Path:
    """``data`` as one line of JSON (results are read by the reports, not by people)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path
