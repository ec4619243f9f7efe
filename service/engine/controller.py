"""SLO controller: lower the budget of unpinned requests as load grows, restore it as load eases.

An anytime network answers a cheaper budget faster, so under overload spending less per image is
better than refusing images (429) or missing the latency target: the controller steps down the
rows of the package's budget table (thresholds calibrated per budget, MSDNet section 5) while
p99 latency nears the target or the queue grows, and steps back up once both are well below.
Requests that pinned a budget or a threshold are never touched.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass


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


class SloController:
    """Chooses the effective budget from the budget table ``budgets`` (ascending rows)."""

    def __init__(self, budgets: list[float], default: float, config: ControllerConfig) -> None:
        self.config = config
        self.rows = sorted(b for b in budgets if b <= default) or [default]
        self.level = len(self.rows) - 1  # index of the effective budget; top = the default
        self._latencies: deque[tuple[float, float]] = deque()
        self._last_step = 0.0
        self._calm = 0  # low-pressure decisions in a row
        self._lock = threading.Lock()

    @property
    def budget(self) -> float:
        return self.rows[self.level]

    def observe(self, latency_s: float) -> None:
        """One image answered ``latency_s`` after its request arrived."""
        with self._lock:
            self._latencies.append((time.monotonic(), latency_s))

    def p99(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._latencies and self._latencies[0][0] < now - self.config.window_s:
                self._latencies.popleft()
            values = sorted(v for _, v in self._latencies)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(0.99 * len(values)))]

    def update(self, drain_s: float, queue_fill: float = 0.0) -> bool:
        """Re-decide from p99, ``drain_s`` (queued work's estimated seconds) and ``queue_fill``
        (queued images over the queue bound); True if the budget changed."""
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
