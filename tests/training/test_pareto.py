"""The Pareto table's arithmetic and the architecture rule, on made-up candidates."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from training.calibrate import OperatingPoint
from training.pareto import (
    Candidate,
    Point,
    capped_and_full,
    choose,
    front_points,
    plot,
    point_ms,
)


def op(compute: float, accuracy: float, fractions: list[float]) -> OperatingPoint:
    return OperatingPoint([0.5] * len(fractions), compute, accuracy, fractions)


def test_a_point_pays_every_stage_up_to_the_exit_its_images_leave_at() -> None:
    # stages of 1, 2 and 3 ms: leaving at exit 0 costs 1, at exit 1 3, at exit 2 6
    assert point_ms([0.5, 0.25, 0.25], [1.0, 2.0, 3.0]) == pytest.approx(0.5 + 0.75 + 1.5)


def test_the_capped_point_is_the_most_accurate_within_the_cap() -> None:
    rows = [
        (0.2, op(0.2, 0.80, [1, 0, 0]), op(0.2, 0.79, [1, 0, 0])),
        (0.4, op(0.4, 0.90, [0.5, 0.5, 0]), op(0.4, 0.88, [0.5, 0.5, 0])),
        (0.6, op(0.6, 0.93, [0.2, 0.4, 0.4]), op(0.6, 0.91, [0.2, 0.4, 0.4])),
        (1.0, op(1.0, 0.92, [0, 0, 1]), op(1.0, 0.92, [0, 0, 1])),
    ]
    points = front_points(rows, full_madds=100.0, stage_ms=[1.0, 1.0, 1.0])
    capped, full = capped_and_full(points, cap=50.0)
    assert capped == Point(0.4, 40.0, 90.0, 88.0, 1.5)
    assert full == Point(1.0, 100.0, 92.0, 92.0, 3.0)
    nothing, _ = capped_and_full(points, cap=10.0)
    assert nothing is None


def candidate(name: str, val: float, share: float, full_ms: float, full_madds: float = 100) -> Candidate:
    return Candidate(
        name, [50.0, full_madds], [val, val], [val, val], [share * full_ms, (1 - share) * full_ms],
        capped=Point(0.5, 50.0, val, val, share * full_ms),
        full=Point(1.0, full_madds, val, val, full_ms),
    )  # fmt: skip


def test_the_rule_takes_the_most_accurate_eligible_and_breaks_ties_by_speed() -> None:
    best = candidate("best", 92.0, 0.5, 2.0)
    near_but_faster = candidate("near", 91.9, 0.5, 1.5)
    slow_point = candidate("slow", 95.0, 0.6, 1.0)  # its point saves too little time
    too_big = candidate("big", 96.0, 0.3, 1.0, full_madds=200)
    assert choose([best, near_but_faster, slow_point, too_big], max_full=150) is near_but_faster
    assert choose([best, candidate("worse", 91.0, 0.5, 1.0)], max_full=150) is best
    assert choose([slow_point, too_big], max_full=150) is None


def test_the_plot_draws_every_network_front(tmp_path: Path) -> None:
    front = (Point(0.3, 30.0, 85.0, 84.0, 0.5), Point(0.6, 60.0, 90.0, 89.5, 1.0),
             Point(1.0, 100.0, 91.0, 90.5, 1.6))  # fmt: skip
    a = Candidate("runs/a", [30.0, 100.0], [85.0, 91.0], [84.0, 90.5], [0.5, 1.1],
                  capped=front[0], full=front[-1], front=front)  # fmt: skip
    b = candidate("runs/b", 88.0, 0.5, 2.0)  # a network with no front rows still draws its exits
    out = plot([a, b], cap=50.0, goal=93.0, out=tmp_path / "fronts.png")
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 1000  # two panels side by side
        colours = png.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # curves, markers and text, not a blank frame
