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
        # Per stage: count, sum n, sum n^2, sum t, sum n*t over the averages, kept up to date
        # as one average changes, so that a refit costs O(1) (it runs after every stage run).
        self._sums = [[0.0] * 5 for _ in range(num_stages)]
        self._line: list[tuple[float, float]] = [(0.0, 0.0)] * num_stages
        self._lock = threading.Lock()

    def observe(self, k: int, n: int, seconds: float) -> None:
        with self._lock:
            avg, sums = self._avg[k], self._sums[k]
            old = avg.get(n)
            if old is None:
                new = seconds
                sums[0] += 1
                sums[1] += n
                sums[2] += n * n
            else:
                new = (1 - _ALPHA) * old + _ALPHA * seconds
            avg[n] = new
            sums[3] += new - (old or 0.0)
            sums[4] += n * (new - (old or 0.0))
            self._line[k] = _fit(*sums)

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


def _fit(count: float, sn: float, snn: float, st: float, snt: float) -> tuple[float, float]:
    """Least-squares line ``(fixed, per_image)`` through the points ``(n, seconds)`` given by
    their sums (count, sum n, sum n^2, sum t, sum n*t); both kept >= 0."""
    mn, mt = sn / count, st / count
    var = snn - count * mn * mn
    if var <= 1e-12 * max(snn, 1.0):  # one batch size seen: all of it per image
        return 0.0, mt / mn
    slope = max((snt - count * mn * mt) / var, 0.0)
    fixed = max(mt - slope * mn, 0.0)
    if slope == 0.0:
        slope = mt / mn
    return fixed, slope
