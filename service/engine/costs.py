"""Measured cost of each stage per batch size: what deadlines and rebatching decide from.

Each stage's cost is modelled as ``fixed + per_image * n`` seconds (a batch's fixed part is
kernel launches and per-call overhead; batching amortises it). Start-up timings at two batch
sizes seed the line; every stage run then updates an exponential moving average per batch size
and the line is refitted from those, so the model follows the live machine (a shared CPU, a
GPU's clocks).
"""

from __future__ import annotations

import threading

_ALPHA = 0.2  # weight of a new measurement in the moving average


class StageCosts:
    """``estimate(k, n)`` seconds of stage ``k`` at batch ``n``; ``observe`` feeds measurements."""

    def __init__(self, num_stages: int) -> None:
        self._avg: list[dict[int, float]] = [{} for _ in range(num_stages)]
        self._line: list[tuple[float, float]] = [(0.0, 0.0)] * num_stages
        self._lock = threading.Lock()

    def observe(self, k: int, n: int, seconds: float) -> None:
        with self._lock:
            avg = self._avg[k]
            avg[n] = seconds if n not in avg else (1 - _ALPHA) * avg[n] + _ALPHA * seconds
            self._line[k] = _fit(avg)

    def estimate(self, k: int, n: int) -> float:
        fixed, per_image = self._line[k]
        return fixed + per_image * n

    def fixed(self, k: int) -> float:
        """The per-batch part of stage ``k``'s cost: what merging two batches saves."""
        return self._line[k][0]

    def efficient_batch(self, k: int, fixed_share: float = 0.25) -> float:
        """Smallest batch whose run spends at most ``fixed_share`` of its time on the fixed part.

        ``fixed / (fixed + per_image * n) <= share``
        <=> ``n >= fixed * (1 - share) / (share * per_image)``.
        """
        fixed, per_image = self._line[k]
        if per_image <= 0.0:
            return 1.0
        return fixed * (1 - fixed_share) / (fixed_share * per_image)

    def remaining(self, k: int, n: int) -> float:
        """Seconds of stages ``k..K-1`` at batch ``n`` (an upper bound for a shrinking batch)."""
        return sum(self.estimate(j, n) for j in range(k, len(self._line)))


def _fit(avg: dict[int, float]) -> tuple[float, float]:
    """Least-squares line ``(fixed, per_image)`` through ``{n: seconds}``; both kept >= 0."""
    if len(avg) == 1:
        ((n, t),) = avg.items()
        return 0.0, t / n
    ns, ts = list(avg), list(avg.values())
    mn, mt = sum(ns) / len(ns), sum(ts) / len(ts)
    var = sum((x - mn) ** 2 for x in ns)
    slope = sum((x - mn) * (y - mt) for x, y in zip(ns, ts, strict=True)) / var
    slope = max(slope, 0.0)
    fixed = max(mt - slope * mn, 0.0)
    if slope == 0.0:
        slope = mt / mn
    return fixed, slope
