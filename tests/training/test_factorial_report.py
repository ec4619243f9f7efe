"""Results files, decision rule, plots and the BENCHMARKS.md section on synthetic scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from training.factorial.analysis import ARM_NAMES, verdict
from training.factorial.collect import RunScores
from training.factorial.plots import plot_anytime, plot_budgeted, plot_norms
from training.factorial.report import HEADING, render_section, update_benchmarks
from training.factorial.results import ImtaResults, load_results, write_results

K, N = 3, 400
# Per arm, the chance each exit is right: IMTA clearly above plain at every exit.
ACCURACY = {
    "plain": (0.50, 0.60, 0.70),
    "ge": (0.49, 0.61, 0.70),
    "lr_scaled": (0.48, 0.60, 0.69),
    "plain+isc_kd": (0.55, 0.64, 0.71),
    "ge+isc_kd": (0.70, 0.78, 0.85),
}


def _scores(seeds: tuple[int, ...] = (0, 1), norms: bool = True) -> list[RunScores]:
    rng = np.random.default_rng(7)
    out = []
    for arm in ARM_NAMES:
        for seed in seeds:
            right = rng.random((K, N)) < np.array(ACCURACY[arm])[:, None]
            log = {"block_grad_norm": [[1.0, 2.0, 3.0]] * 4, "block_weight_norm": [[5.0, 6.0, 7.0]] * 4}
            out.append(
                RunScores(
                    arm=arm, seed=seed, right=right, labels_digest="x", epochs=4,
                    madds=[7.5, 14.0, 21.4], val_accuracy=[0.5, 0.6, 0.7],
                    budgets=[
                        {"budget": b, "optimised": {"compute": b * 0.9, "accuracy": 0.6 + b / 10},
                         "geometric": {"compute": b * 0.8, "accuracy": 0.6}}
                        for b in (0.4, 0.7, 1.0)
                    ],
                    geometric_curve=[{"compute": c, "accuracy": 0.5 + c / 4} for c in (0.35, 0.6, 1.0)],
                    norms=log if norms and arm in ("plain", "ge") else {},
                )
            )  # fmt: skip
    return out


def _book(seeds: list[int]) -> dict[str, Any]:
    keys = [f"{a}/seed{s}" for s in seeds for a in ARM_NAMES]
    return {"seeds": seeds, "planned": keys, "finished": keys, "epochs": 4}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("results")
    write_results(_scores(), _book([0, 1]), out, resamples=500)
    return out


def test_results_file_has_exactly_the_issue_schema(written: Path) -> None:
    raw = json.loads((written / "imta.json").read_text())
    assert set(raw) == {"n_eval", "epochs", "arms"}
    assert raw["n_eval"] == N and raw["epochs"] == 4
    assert set(raw["arms"]) == set(ARM_NAMES)
    assert all(set(seeds) == {"0", "1"} for seeds in raw["arms"].values())
    expected = next(s for s in _scores() if s.arm == "ge+isc_kd" and s.seed == 1).right.mean(axis=1)
    assert raw["arms"]["ge+isc_kd"]["1"] == pytest.approx(expected.tolist())
    assert load_results(written / "imta.json").n_eval == N


@pytest.mark.parametrize(
    "arms",
    [
        {"imta": {"0": [0.5]}},  # not an arm name
        {"plain": {"0": [50.0]}},  # a percentage, not a fraction
        {"plain": {"zero": [0.5]}},  # seeds are integers as text
        {"plain": {"0": [0.5, 0.6]}, "ge": {"0": [0.5]}},  # different exit counts
    ],
)
def test_results_schema_rejects(arms: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ImtaResults(n_eval=10, epochs=1, arms=arms)


def test_stats_hold_the_primary_comparison_and_its_verdict(written: Path) -> None:
    stats = json.loads((written / "imta_stats.json").read_text())
    primary = stats["comparisons"][0]
    assert (primary["a"], primary["b"], primary["seeds"]) == ("ge+isc_kd", "plain", [0, 1])
    assert len(primary["exits"]) == K and len(primary["per_seed"]) == 2
    assert all(e["low"] > 0 for e in primary["exits"])
    assert stats["verdict"]["outcome"] == "gain at every exit"
    assert stats["verdict"]["partial"] is False
    assert len(stats["comparisons"]) == 7


def _primary(estimates: list[float], low: float, high: float, seeds: list[int]) -> dict[str, Any]:
    exits = [{"estimate": e, "mcnemar_p_holm": 0.01} for e in estimates]
    mean = {"estimate": sum(estimates) / len(estimates), "low": low, "high": high}
    return {"seeds": seeds, "exits": exits, "mean_over_exits": mean}


@pytest.mark.parametrize(
    ("estimates", "low", "high", "outcome"),
    [
        ([0.01, 0.0, 0.02], 0.001, 0.02, "gain at every exit"),
        ([0.03, -0.002, 0.02], 0.001, 0.03, "gain on average, not at every exit"),
        ([-0.02, -0.01, -0.01], -0.02, -0.001, "loss"),
        ([0.01, -0.01, 0.0], -0.01, 0.01, "no detectable difference"),
    ],
)
def test_decision_rule(estimates: list[float], low: float, high: float, outcome: str) -> None:
    v = verdict(_primary(estimates, low, high, [0, 1]), [0, 1])
    assert v["outcome"] == outcome and not v["partial"]
    assert v["paper_target_met"] == (outcome == "gain at every exit")


def test_fewer_seeds_than_planned_or_than_two_is_partial() -> None:
    assert verdict(_primary([0.01], 0.001, 0.02, [0, 1]), [0, 1, 2])["partial"]
    assert verdict(_primary([0.01], 0.001, 0.02, [0]), [0])["partial"]
    assert verdict(None, [0, 1])["outcome"] == "no result"


def test_report_section_and_plots(written: Path, tmp_path: Path) -> None:
    stats = json.loads((written / "imta_stats.json").read_text())
    for plot in (plot_anytime, plot_budgeted, plot_norms):
        plot(stats, tmp_path / f"{plot.__name__}.png")
        assert (tmp_path / f"{plot.__name__}.png").stat().st_size > 1000
    text = render_section(stats, "benchmarks/results/imta")
    assert text.startswith(HEADING)
    assert "IMTA beats plain multi-exit training here" in text and "Partial" not in text
    assert "| `ge+isc_kd` | **mean** |" in text
    ge_exit0 = stats["comparisons"][1]["exits"][0]  # ge vs plain: a McNemar p well above 0.001
    assert f"| {ge_exit0['mcnemar_p']:.3f} ({ge_exit0['mcnemar_p_holm']:.3f}) |" in text
    assert "bootstrap < 2e-03" in text  # IMTA's clear gain: no resample of 500 reaches zero
    # One mean-over-exits row per comparison.
    assert sum(line.startswith("| **mean** |") for line in text.splitlines()) == 7
    assert "![per-block norms](benchmarks/results/imta/norms.png)" in text


def test_norms_plot_is_skipped_without_logged_norms(tmp_path: Path) -> None:
    out = tmp_path / "r"
    write_results(_scores(seeds=(0,), norms=False), _book([0]), out, resamples=200)
    stats = json.loads((out / "imta_stats.json").read_text())
    assert plot_norms(stats, tmp_path / "n.png") is False and not (tmp_path / "n.png").exists()
    text = render_section(stats, "p")
    assert "**Partial result (1 of the 2 seeds the rule needs)" in text and "norms.png" not in text


def test_update_benchmarks_inserts_once_then_replaces(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## IMTA ablation\n\nold\n\n## Serving\n\nrows\n")
    update_benchmarks(md, f"{HEADING} (x)\n\nfirst\n\n### Verdict\n\nv1\n")
    update_benchmarks(md, f"{HEADING} (x)\n\nsecond\n\n### Verdict\n\nv2\n")
    text = md.read_text()
    assert text.count(HEADING) == 1 and "second" in text and "first" not in text and "v1" not in text
    assert text.index("## IMTA ablation") < text.index(HEADING) < text.index("## Serving")
    assert text.endswith("rows\n")
