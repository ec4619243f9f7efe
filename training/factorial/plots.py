"""The factorial's plots (matplotlib, small PNGs) from ``imta_stats.json``.

- ``anytime.png``: each exit's test accuracy against its cumulative multiply-adds, per arm (the
  mean over seeds, each seed as a faint point).
- ``budgeted.png``: budgeted batch classification, thresholds fitted on the validation images
  and scored on the test images: test accuracy against the mean multiply-adds per image, per arm
  (optimised thresholds per budget, averaged over seeds; MSDNet's geometric sweep dotted).
- ``norms.png``: per-block gradient norm (RMS over each epoch's steps) and weight norm per epoch,
  plain against GE (and the learning-rate control), the mean over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D

from training.factorial.analysis import ARM_NAMES
from training.plots import figure

COLOURS = dict(
    zip(ARM_NAMES, ("tab:grey", "tab:blue", "tab:green", "tab:red", "tab:orange"), strict=True)
)


def _runs_of(stats: dict[str, Any], arm: str) -> list[dict[str, Any]]:
    return [r for r in stats["runs"] if r["arm"] == arm]


def _seed_label(arm: str, n_seeds: int) -> str:
    """``plain (mean of 2 seeds)``; ``plain (1 seed)``."""
    return f"{arm} (mean of {n_seeds} seeds)" if n_seeds > 1 else f"{arm} (1 seed)"


def plot_anytime(stats: dict[str, Any], path: Path) -> None:
    with figure(path) as (_, ax):
        for arm in ARM_NAMES:
            if not (runs := _runs_of(stats, arm)):
                continue
            madds, acc = runs[0]["madds"], 100 * np.array([r["test_accuracy"] for r in runs])
            ax.plot(madds, acc.mean(0), "o-", color=COLOURS[arm], label=_seed_label(arm, len(runs)))
            for row in acc:
                ax.plot(madds, row, ".", color=COLOURS[arm], alpha=0.35)
        ax.set(title="Anytime: each exit, test images", xlabel="cumulative multiply-adds (M)",
               ylabel="top-1 %")  # fmt: skip
        ax.legend(fontsize=7)


def plot_budgeted(stats: dict[str, Any], path: Path) -> None:
    with figure(path) as (_, ax):
        for arm in ARM_NAMES:
            if not (runs := _runs_of(stats, arm)):
                continue
            full, pts = runs[0]["madds"][-1], []
            for b in sorted({b["budget"] for r in runs for b in r["budgets"]}):
                rows = [x["optimised"] for r in runs for x in r["budgets"] if x["budget"] == b]
                if len(rows) == len(runs):  # a budget every seed reached
                    pts.append(
                        (np.mean([p["compute"] for p in rows]), np.mean([p["accuracy"] for p in rows]))
                    )
            ax.plot(
                [full * c for c, _ in pts],
                [100 * a for _, a in pts],
                "o-",
                color=COLOURS[arm],
                label=arm,
            )
            grid = np.linspace(0, 1, 41)
            curves = np.array([_interpolate(r["geometric_curve"], grid) for r in runs])
            reached = ~np.isnan(curves).any(axis=0)  # compute every seed's curve covers
            ax.plot(full * grid[reached], 100 * curves[:, reached].mean(0), ":", color=COLOURS[arm])
        ax.set(title="Budgeted: validation-fitted thresholds, test images",
               xlabel="mean multiply-adds per image (M)", ylabel="top-1 %")  # fmt: skip
        ax.legend(fontsize=7, title="optimised (dotted: geometric)", title_fontsize=7)


def _interpolate(curve: list[dict[str, float]], grid: np.ndarray) -> np.ndarray:
    """A run's geometric curve on a common compute grid (NaN outside the compute it reached)."""
    pts = sorted((p["compute"], p["accuracy"]) for p in curve)
    xs, ys = np.array([c for c, _ in pts]), np.array([a for _, a in pts])
    out = np.interp(grid, xs, ys)
    out[(grid < xs[0]) | (grid > xs[-1])] = np.nan
    return out


def _block_colour(block: int, blocks: int) -> Any:
    return colormaps["viridis"](block / max(blocks - 1, 1))


def plot_norms(stats: dict[str, Any], path: Path) -> bool:
    """Returns False (and writes nothing) when no run logged block norms."""
    arms = [a for a in ("plain", "ge", "lr_scaled") if any(r["norms"] for r in _runs_of(stats, a))]
    if not arms:
        return False
    styles: dict[str, Literal["-", "--", ":"]] = {"plain": "-", "ge": "--", "lr_scaled": ":"}
    with figure(path, cols=2, size=(10, 4)) as (_, axes):
        for ax, key, title in zip(axes, ("block_grad_norm", "block_weight_norm"),
                                  ("gradient norm (RMS over steps)", "weight norm"),
                                  strict=True):  # fmt: skip
            for arm in arms:
                series = [np.array(r["norms"][key]) for r in _runs_of(stats, arm) if key in r["norms"]]
                length = min(len(s) for s in series)
                mean = np.mean([s[:length] for s in series], axis=0)  # [epochs, blocks]
                blocks = mean.shape[1]
                for block in range(blocks):
                    ax.plot(
                        range(1, length + 1),
                        mean[:, block],
                        styles[arm],
                        color=_block_colour(block, blocks),
                    )
            ax.set(title=f"per block: {title}", xlabel="epoch", yscale="log")
        # Colour says the block, line style the arm: one legend entry each, not one per pair.
        handles = [
            Line2D([], [], color=_block_colour(b, blocks), label=f"block {b}") for b in range(blocks)
        ]
        handles += [Line2D([], [], color="black", linestyle=styles[a], label=a) for a in arms]
        axes[0].legend(handles=handles, fontsize=7, ncol=2)
    return True
