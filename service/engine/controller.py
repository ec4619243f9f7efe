"""SLO controller: lower the budget of unpinned requests as load grows, restore it as load eases.

An anytime network answers a cheaper budget faster, so under overload spending less per image is
better than refusing images (429) or missing the latency target: the controller steps down the
rows of the package's budget table (thresholds calibrated per budget, MSDNet section 5) while
p99 latency nears the target or the queue grows, and steps back up once both are well below.
Requests that pinned a budget or a threshold are never touched. With ``max_accuracy_loss`` set,
only rows whose measured test accuracy is within that much of the default row's are eligible
(Apparate-style accuracy-loss budget, about 1%): the controller may trade latency for compute but
never more accuracy than the operator allowed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from models.package import governing_row


@dataclass(frozen=True)
class ControllerConfig:
    p99_target_s: float
    """Latency target of the 99th percentile, arrival to answer."""
    window_s: float = 2.0
    """Latencies older than this leave the p99 window."""
    interval_s: float = 0.1
    """Shortest time between two budget steps."""
    high: float = 0.7
    """Step down when p99 or the queue's estimated drain time passes ``high * target``."""
    low: float = 0.35
    """Step up when both are below ``low * target`` ..."""
    up_after: int = 5
    """... at ``up_after`` decisions in a row (restoring too early refills the queue)."""
    queue_high: float = 0.5
    """Step down, too, when the queue is fuller than this share of its bound (before any 429)."""
    max_accuracy_loss: float | None = None
    """Lowest eligible row: test accuracy at most this below the default row's (0.01 = 1 point);
    rows without a measured accuracy are then not eligible. None: every row down to the lowest."""


def eligible_budgets(
    rows: list[tuple[float, float | None]], default: float, max_accuracy_loss: float | None
) -> list[float]:
    """The budgets (ascending) the controller may choose among: the table's ``(budget, test
    accuracy)`` rows below ``default``'s own row, then ``default`` itself (always eligible, the top).

    ``default``'s own row is the one whose thresholds it runs with: the largest row not above it
    (``models.package.governing_row``), so a default of 0.55 runs as the row 0.5, and that row is no
    cheaper step below it. With ``max_accuracy_loss``, a row is eligible only if its accuracy is at
    most that far below that own row's; without a measured accuracy for both, it is not."""
    accuracy = dict(rows)
    own = governing_row(accuracy, default)
    top = own if own is not None else default
    below = [(b, a) for b, a in sorted(accuracy.items()) if b < top - 1e-9]
    if max_accuracy_loss is not None:
        ref = accuracy[own] if own is not None else None
        below = [
            (b, a)
            for b, a in below
            if ref is not None and a is not None and a >= ref - max_accuracy_loss
        ]
    return [*(b for b, _ in below), default]


class SloController:
    """Chooses the effective budget among the budget table's rows ``(budget, test accuracy)``."""

    def __init__(
        self, rows: list[tuple[float, float | None]], default: float, config: ControllerConfig
    ) -> None:
        self.config = config
        self.rows = eligible_budgets(rows, default, config.max_accuracy_loss)
        self.level = len(self.rows) - 1  # index of the effective budget; top = the default
        self._latencies: deque[tuple[float, float, int]] = deque()
        self._last_step = 0.0
        self._calm = 0  # low-pressure decisions in a row
        self._lock = threading.Lock()  # the latency window
        self._deciding = threading.Lock()  # one decision at a time: workers call update() at once

    @property
    def budget(self) -> float:
        return self.rows[self.level]

    def observe(self, latency_s: float, count: int = 1) -> None:
        """``count`` images (of one request) answered ``latency_s`` after the request arrived."""
        with self._lock:
            self._latencies.append((time.monotonic(), latency_s, count))

    def p99(self) -> float:
        """The 99th percentile of the window's latencies, each image counted once."""
        now = time.monotonic()
        with self._lock:
            while self._latencies and self._latencies[0][0] < now - self.config.window_s:
                self._latencies.popleft()
            values = sorted((v, c) for _, v, c in self._latencies)
        if not values:
            return 0.0
        total = sum(c for _, c in values)
        rank = min(total - 1, int(0.99 * total))  # the image at this rank, 0-based
        seen = 0
        for v, c in values:
            seen += c
            if seen > rank:
                return v
        return values[-1][0]

    def update(self, drain_s: float, queue_fill: float = 0.0) -> bool:
        """Re-decide from p99, ``drain_s`` (queued work's estimated seconds) and ``queue_fill``
        (queued images over the queue bound); True if the budget changed."""
        with self._deciding:
            return self._decide(drain_s, queue_fill)

    def _decide(self, drain_s: float, queue_fill: float) -> bool:
        now = time.monotonic()
        cfg = self.config
        if now - self._last_step < cfg.interval_s:
            return False
        self._last_step = now
        pressure = max(self.p99(), drain_s) / cfg.p99_target_s
        old = self.level
        if pressure > cfg.high or queue_fill > cfg.queue_high:
            self._calm = 0
            self.level = max(0, self.level - 1)
        elif pressure < cfg.low:
            self._calm += 1
            if self._calm >= cfg.up_after and self.level < len(self.rows) - 1:
                self.level += 1
                self._calm = 0
        else:
            self._calm = 0
        if self.level != old:
            with self._lock:
                self._latencies.clear()  # the old budget's latencies say nothing of the new one
        return self.level != old
