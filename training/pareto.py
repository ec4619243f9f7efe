"""Trained candidates on one accuracy-compute-time table, and the architecture rule applied.

``python -m training.pareto runs/a runs/b packages/default`` (run directories or packages, all
trained on the same split): for each network, its exits' validation and test accuracy and
cumulative multiply-adds, the ONNX Runtime time of every stage (batch 32, one thread, as
``training.architectures`` measures it), and two operating points of its validation front
(``training/front.py``): the most accurate one whose mean compute is at most ``--cap`` million
multiply-adds, and the full network. A point's time per image is what its exit shares cost on the
test split: an image that leaves at exit k paid stages 0..k.

The rule, stated before the runs (docs/frontier.md): among candidates whose full network is at
most ``--max-full`` million multiply-adds, the one with the highest validation accuracy at the
capped point, provided that point's time is at most 0.55 of its full pass's; within 0.2 point,
the faster full pass. It replaces the shipped package only at >= 93.0 % there and a full network
above the shipped one's validation accuracy (``--shipped``).

``--plot FILE`` draws every network's whole front: validation accuracy against multiply-adds, and
test accuracy against time, where a curve shows what two points of a table cannot.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from training.architectures import exit_costs
from training.calibrate import ExitScores, OperatingPoint
from training.markdown import table

TIME_SHARE_MAX = 0.55
TIE_POINTS = 0.2


@dataclass(frozen=True)
class Point:
    """An operating point: mean compute (M multiply-adds), accuracy (%) and time (ms/image)."""

    budget: float
    mult_adds: float
    val: float
    test: float
    ms: float


@dataclass(frozen=True)
class Candidate:
    name: str
    exit_mult_adds: list[float]
    exit_val: list[float]
    exit_test: list[float]
    stage_ms: list[float]
    capped: Point | None  # None: no point of the front is within the cap
    full: Point
    front: tuple[Point, ...] = field(default=())  # every row of the validation front, cheapest first

    @property
    def time_share(self) -> float | None:
        return None if self.capped is None else self.capped.ms / self.full.ms


def point_ms(exit_fractions: list[float], stage_ms: list[float]) -> float:
    """Milliseconds per image of images leaving at exit k with share ``exit_fractions[k]`` (pure)."""
    cumulative = torch.tensor(stage_ms, dtype=torch.float64).cumsum(0)
    return float(torch.tensor(exit_fractions, dtype=torch.float64) @ cumulative)


def front_points(
    rows: list[tuple[float, OperatingPoint, OperatingPoint]], full_madds: float, stage_ms: list[float]
) -> list[Point]:
    """Front rows ``(budget, val, test)`` as points: compute from validation, time from the test
    split's exit shares (pure)."""
    return [
        Point(budget, val.compute * full_madds, 100 * val.accuracy, 100 * test.accuracy,
              point_ms(test.exit_fractions, stage_ms))
        for budget, val, test in rows
    ]  # fmt: skip


def capped_and_full(points: list[Point], cap: float) -> tuple[Point | None, Point]:
    """From a front's points (:func:`front_points`), cheapest first and the full network last:
    the most accurate on validation within ``cap`` M multiply-adds, and the full network (pure)."""
    within = [p for p in points if p.mult_adds <= cap + 1e-9]
    best = max(within, key=lambda p: (p.val, -p.mult_adds), default=None)
    return best, points[-1]


def choose(candidates: list[Candidate], max_full: float) -> Candidate | None:
    """The architecture rule (module docstring) over trained candidates (pure)."""
    eligible = [
        c for c in candidates
        if c.full.mult_adds <= max_full + 1e-9 and c.capped is not None
        and (c.time_share or 0.0) <= TIME_SHARE_MAX
    ]  # fmt: skip
    if not eligible:
        return None
    top = max(c.capped.val for c in eligible if c.capped is not None)
    tied = [c for c in eligible if c.capped is not None and c.capped.val >= top - TIE_POINTS]
    return min(tied, key=lambda c: c.full.ms)


def measure(path: Path, cap: float, data_dir: str | None, repeats: int) -> Candidate:
    """One network's row: accuracies from its own split, stage times from its architecture."""
    from training.checkpoint import load_trained
    from training.config import recorded_config
    from training.data import load_dataset
    from training.front import front_table
    from training.loop import collect_logits

    net = load_trained(path, str(path))
    cfg = recorded_config(net.config, data_dir)
    data, d = load_dataset(cfg.data), cfg.data
    scores = {
        part: ExitScores.from_logits(
            collect_logits(net.model, getattr(data, part), d.mean, d.std, batch_size=500),
            getattr(data, part).y,
        )
        for part in ("val", "test")
    }
    costs = exit_costs(net.model, tuple(d.input_size), repeats=repeats)  # type: ignore[arg-type]
    madds = [c.mult_adds_millions for c in costs]
    stage_ms = [c.stage_ms_per_image for c in costs]
    fractions = torch.tensor([m / madds[-1] for m in madds], dtype=torch.float64)
    rows = [(r.budget, r.val, r.test) for r in front_table(scores["val"], scores["test"], fractions)]
    front = front_points(rows, madds[-1], stage_ms)
    capped, full = capped_and_full(front, cap)
    return Candidate(
        name=str(path),
        exit_mult_adds=madds,
        exit_val=[100 * float(a) for a in scores["val"].correct.float().mean(1)],
        exit_test=[100 * float(a) for a in scores["test"].correct.float().mean(1)],
        stage_ms=stage_ms,
        capped=capped,
        full=full,
        front=tuple(front),
    )


def report(candidates: list[Candidate], cap: float) -> list[str]:
    def fmt(values: list[float], digits: int = 1) -> str:
        return " / ".join(f"{v:.{digits}f}" for v in values)

    head = ["network", "exits: M mult-adds", "exits: val %", "exits: test %",
            f"best at <= {cap:g} M: M mult-adds, val %, test %, ms (share of full)",
            "full: M mult-adds, val %, test %, ms"]  # fmt: skip
    rows = []
    for c in candidates:
        p, f = c.capped, c.full
        best = (
            "none"
            if p is None
            else (f"{p.mult_adds:.1f}, {p.val:.2f}, {p.test:.2f}, {p.ms:.3f} ({c.time_share:.2f})")
        )
        rows.append([c.name, fmt(c.exit_mult_adds), fmt(c.exit_val, 2), fmt(c.exit_test, 2), best,
                     f"{f.mult_adds:.1f}, {f.val:.2f}, {f.test:.2f}, {f.ms:.3f}"])  # fmt: skip
    return table(head, rows)


def plot(candidates: list[Candidate], cap: float, goal: float, out: Path) -> Path:
    """Each network's front: validation accuracy against mean multiply-adds (its exits as
    triangles, the cap and the goal as lines), and test accuracy against ms per image."""
    from training.plots import figure

    with figure(out, cols=2, size=(12, 4.5), dpi=110) as (_, (by_madds, by_ms)):
        for i, c in enumerate(candidates):
            color, label = f"C{i}", "/".join(Path(c.name).parts[-2:])
            by_madds.plot([p.mult_adds for p in c.front], [p.val for p in c.front], "o-",
                          color=color, markersize=3, label=label)  # fmt: skip
            by_madds.plot(c.exit_mult_adds, c.exit_val, "^", color=color, markersize=6)
            by_ms.plot([p.ms for p in c.front], [p.test for p in c.front], "o-", color=color,
                       markersize=3, label=label)  # fmt: skip
        by_madds.axvline(cap, color="grey", linestyle="--", linewidth=1)
        by_madds.axhline(goal, color="grey", linestyle=":", linewidth=1)
        by_madds.set_ylim(top=max(by_madds.get_ylim()[1], goal + 0.5))  # the goal line in view
        title = f"validation front (triangles: exits; cap {cap:g} M, goal {goal:g} %)"
        by_madds.set(xlabel="mean compute (M multiply-adds per image)",
                     ylabel="validation accuracy (%)", title=title)  # fmt: skip
        by_ms.set(xlabel="ms per image (ONNX Runtime, batch 32, one thread)",
                  ylabel="test accuracy (%)", title="test accuracy against time")  # fmt: skip
        by_madds.legend(loc="lower right", fontsize=8)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pareto", description=__doc__.split("\n\n")[0])
    p.add_argument("networks", type=Path, nargs="+", help="run directories or model packages")
    p.add_argument("--cap", type=float, default=50.0, help="M multiply-adds of the capped point")
    p.add_argument("--max-full", type=float, default=150.0, help="largest eligible full network")
    p.add_argument("--shipped", type=float, default=91.36, help="shipped full network's val %%")
    p.add_argument("--goal", type=float, default=93.0, help="val %% at the cap needed to ship")
    p.add_argument("--data-dir", help="override data.path of the networks' configs")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per stage; the median")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--plot", type=Path, help="also draw the fronts to this PNG")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    candidates = [measure(n, args.cap, args.data_dir, args.repeats) for n in args.networks]
    print("\n".join(report(candidates, args.cap)))
    chosen = choose(candidates, args.max_full)
    if chosen is None:
        print("\nno candidate is eligible (full network, capped point or its time share)")
    else:
        assert chosen.capped is not None
        ships = chosen.capped.val >= args.goal and chosen.full.val > args.shipped
        print(f"\nchosen: {chosen.name}; it {'replaces' if ships else 'does not replace'} the "
              f"shipped package ({chosen.capped.val:.2f} % at the cap, goal {args.goal} %; full "
              f"{chosen.full.val:.2f} % vs {args.shipped} %)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in candidates], indent=2) + "\n")
    if args.plot:
        print(f"plot: {plot(candidates, args.cap, args.goal, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
