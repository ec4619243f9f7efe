"""benchmarks.ab's verdict: medians, their ratio and the paired ratios of one sitting."""

from __future__ import annotations

import pytest

from benchmarks.ab import summary


def test_summary_pairs_the_rounds_in_order() -> None:
    s = summary({"a": [110.0, 90.0, 120.0], "b": [100.0, 100.0, 100.0]})
    assert s["a"] == 110.0 and s["b"] == 100.0 and s["ratio"] == pytest.approx(1.1)
    assert s["paired"] == pytest.approx([0.9, 1.1, 1.2]) and s["a_wins"] == 2


def test_summary_refuses_unpaired_rounds() -> None:
    with pytest.raises(ValueError):
        summary({"a": [1.0, 2.0], "b": [1.0]})
