"""Accuracy guard: audit a sample of early answers against the final exit, per exit.

Calibration sets thresholds on held-out data; live traffic drifts. A small fraction of the images
that leave early also runs on to the final exit (``stage.py``'s shadows) and this module keeps,
per exit, a sliding window of "did the early answer agree with the final one". Apparate (SOSP
2024) tunes thresholds online against the final exit in the same way; here a window whose
agreement falls below a floor raises that exit's threshold by a step (never lowers it: the guard
only ever spends more compute to stay accurate).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class GuardConfig:
    fraction: float = 0.0
    """Share of early answers that also run to the final exit (0 = guard off)."""
    window: int = 200
    """Audited answers per exit in the sliding window."""
    floor: float | None = None
    """Agreement below which the exit's threshold is tightened (None = only measure)."""
    step: float = 0.02
    """How much one tightening raises the threshold."""
    min_samples: int = 50
    """Audits needed in the window before the floor is acted on."""


class AccuracyGuard:
    """Per-exit agreement windows and the threshold shifts they earned (thread-safe)."""

    def __init__(self, num_exits: int, config: GuardConfig) -> None:
        self.config = config
        self._windows: list[deque[bool]] = [deque(maxlen=config.window) for _ in range(num_exits)]
        self._shift = [0.0] * num_exits
        self._lock = threading.Lock()

    @property
    def shift(self) -> tuple[float, ...]:
        return tuple(self._shift)

    def agreement(self, k: int) -> float | None:
        """Share of agreeing audits at exit ``k`` in the window; None before any audit."""
        with self._lock:  # another worker's record() may append meanwhile
            w = self._windows[k]
            return sum(w) / len(w) if w else None

    def record(self, audits: list[tuple[int, bool]]) -> list[int]:
        """Add ``(exit, agrees)`` audits; returns the exits whose threshold was just tightened."""
        tightened = []
        cfg = self.config
        with self._lock:
            for k, agrees in audits:
                self._windows[k].append(agrees)
            for k in {k for k, _ in audits}:
                w = self._windows[k]
                if cfg.floor is None or len(w) < cfg.min_samples or sum(w) / len(w) >= cfg.floor:
                    continue
                self._shift[k] += cfg.step
                w.clear()  # judge the new threshold on fresh audits only
                tightened.append(k)
        return tightened
