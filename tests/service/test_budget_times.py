"""Budgets in time: each row's expected ms per image and images/s from the stage cost model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from models.package import BudgetEntry
from service.budget_times import budget_time, reach_fractions
from service.engine.costs import StageCosts


def _costs() -> StageCosts:
    """Stage 0: 1 ms + 0.5 ms per image; stage 1: 2 ms + 1 ms per image (two batch sizes each)."""
    costs = StageCosts(2)
    for n in (1, 8):
        costs.observe(0, n, 0.001 + 0.0005 * n)
        costs.observe(1, n, 0.002 + 0.001 * n)
    return costs


def _row(exit_fractions: list[float] | None) -> BudgetEntry:
    return BudgetEntry(
        budget=0.5, thresholds=[0.5, 0.0], expected_compute_fraction=0.5, exit_fractions=exit_fractions
    )


def test_reach_counts_the_images_that_run_each_stage() -> None:
    assert reach_fractions([0.5, 0.3, 0.2]) == pytest.approx([1.0, 0.5, 0.2])


def test_a_row_in_time_weights_each_stage_by_the_share_that_runs_it() -> None:
    t = budget_time(_row([0.5, 0.5]), _costs(), max_batch_size=8)
    assert t is not None
    # Alone: all run stage 0 (1.5 ms), half run stage 1 (3 ms) -> 1.5 + 1.5 = 3 ms.
    assert t.ms_per_image == pytest.approx(3.0)
    # A batch of 8: stage 0 on 8 (5 ms), stage 1 on the 4 left (6 ms) -> 8 images in 11 ms.
    assert t.images_per_s == pytest.approx(8 / 0.011)


def test_no_time_without_exit_fractions_or_without_timings() -> None:
    assert budget_time(_row(None), _costs(), 8) is None
    assert budget_time(_row([0.5, 0.5]), StageCosts(2), 8) is None


def test_models_list_and_gauges_show_each_budget_in_time(client: TestClient) -> None:
    (model,) = client.get("/v1/models").json()["models"]
    rows = {b["budget"]: b for b in model["budgets"]}
    assert set(rows) == {0.6, 0.8, 1.0}
    metrics = client.get("/metrics").text
    for budget, row in rows.items():
        assert row["expected_ms_per_image"] > 0 and row["expected_images_per_s"] > 0
        labels = f'budget="{budget}",model="{model["name"]}",version="1"'
        gauge = f"anytime_budget_expected_latency_seconds{{{labels}}}"
        line = next(x for x in metrics.splitlines() if x.startswith(gauge))
        assert float(line.split()[-1]) == pytest.approx(row["expected_ms_per_image"] / 1000)
    # Budget 1.0 runs every stage for every image; 0.6 lets three quarters skip the last one.
    assert rows[0.6]["expected_ms_per_image"] < rows[1.0]["expected_ms_per_image"]
    assert rows[0.6]["expected_images_per_s"] > rows[1.0]["expected_images_per_s"]
