"""PNG plots (matplotlib, Agg backend): training curves and the anytime / budgeted accuracy plot,
and :func:`figure`, the frame the factorial's plots are drawn in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.calibrate import BudgetRow, OperatingPoint


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def figure(
    path: Path,
    cols: int = 1,
    size: tuple[float, float] = (6, 4),
    dpi: int = 90,
    rect: tuple[float, float, float, float] = (0, 0, 1, 1),
) -> Iterator[tuple[Any, Any]]:
    """``(figure, axes)``: ``cols`` gridded axes side by side, laid out in ``rect`` and saved to
    ``path`` at the end of the block (the serving benchmarks' frame: the pages look alike)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, cols, figsize=size)
    for ax in [axes] if cols == 1 else axes:
        ax.grid(alpha=0.3)
    yield fig, axes
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_training(history: list[dict[str, Any]], out: Path) -> Path:
    """Loss and per-exit validation accuracy against the epoch number (all stages in sequence)."""
    plt = _pyplot()
    rows = [r for r in history if "loss" in r]
    epochs = list(range(1, len(rows) + 1))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [r["loss"] for r in rows])
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    k = len(rows[0]["val_exit_acc"]) if rows else 0
    for i in range(k):
        ax_acc.plot(epochs, [100 * r["val_exit_acc"][i] for r in rows], label=f"exit {i}")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="per-exit validation accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_budgeted(
    anytime: list[tuple[float, float]],
    geometric_curve: list[OperatingPoint],
    rows: list[BudgetRow],
    out: Path,
    *,
    full_mflops: float,
) -> Path:
    """Test accuracy against mean compute: anytime exits, the geometric sweep, the optimised table.

    Args:
        anytime: ``(compute fraction, accuracy)`` of each exit on the test split.
        geometric_curve: test points of the whole geometric ``p`` sweep (fitted on validation).
        rows: the budget table (both methods, test points).
        full_mflops: multiply-adds of the full network (millions), for the top axis label.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    geo = sorted((p.compute, p.accuracy) for p in geometric_curve)
    ax.plot(
        [c for c, _ in geo],
        [100 * a for _, a in geo],
        "-",
        color="tab:blue",
        label="geometric (MSDNet) sweep",
    )
    ax.plot(
        [r.geometric_test.compute for r in rows], [100 * r.geometric_test.accuracy for r in rows],
        "s", color="tab:blue", label="geometric, per budget",
    )  # fmt: skip
    ax.plot(
        [r.optimised_test.compute for r in rows], [100 * r.optimised_test.accuracy for r in rows],
        "o-", color="tab:red", label="optimised, per budget",
    )  # fmt: skip
    ax.plot([c for c, _ in anytime], [100 * a for _, a in anytime], "k^", label="anytime (each exit)")
    ax.set(
        xlabel=f"mean compute (fraction of the full network, {full_mflops:.1f}M multiply-adds)",
        ylabel="test accuracy (%)",
        title="budgeted batch classification (thresholds fitted on validation)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
