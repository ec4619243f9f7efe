"""What an engine counts (:class:`EngineMeters`), and many equal observations at once.

The engine answers a batch's images at one exit together: they share one compute fraction, and
one request's images share one queue wait. ``prometheus_client`` observes one value at a time,
and a call per image was a large share of the engine's host time, so this adds ``count`` equal
observations in one step with the same bucket rule as ``Histogram.observe`` (first bucket whose
upper bound is at least the value).
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Histogram

from models.package import Manifest
from service.engine.work import RequestWork
from service.metrics import ServiceMetrics


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``count`` observations of ``value`` on a labelled histogram child (``h.labels(...)``)."""
    if count <= 0:
        return
    if count == 1:
        histogram.observe(value)
        return
    histogram._sum.inc(value * count)
    for bucket, bound in zip(histogram._buckets, histogram._upper_bounds, strict=True):
        if value <= bound:
            bucket.inc(count)
            break


class EngineMeters:
    """What one model's engine counts, on its metric children resolved once (``labels()`` costs a
    lock and a dict lookup per call)."""

    def __init__(self, metrics: ServiceMetrics, name: str, manifest: Manifest) -> None:
        m, k, v = metrics, manifest.num_exits, manifest.version
        self.metrics, self.name, self.version = metrics, name, v
        self.fractions = [e.compute_fraction for e in manifest.exits]
        self.flops = [e.flops for e in manifest.exits]
        self.exit_images = [m.exit_images.labels(name, v, str(i)) for i in range(k)]
        self.batch_size = [m.batch_size.labels(name, v, str(i)) for i in range(k)]
        self.spent, self.saved = m.flops.labels(name, v), m.flops_saved.labels(name, v)
        self.fraction = m.compute_fraction.labels(name, v)
        self.queue_wait = m.queue_wait.labels(name, v)
        self.late, self.queue_depth = m.deadline_exits.labels(name, v), m.queue_depth.labels(name, v)

    def answered(self, k: int, m: int, late: int) -> None:
        """``m`` images answered at exit ``k``, ``late`` of them deadline exits."""
        spent = self.flops[k] * m
        self.exit_images[k].inc(m)
        self.spent.inc(spent)
        self.saved.inc(self.flops[-1] * m - spent)
        observe_many(self.fraction, self.fractions[k], m)
        if late:
            self.late.inc(late)

    def waited(self, owners: list[RequestWork], owner: np.ndarray, now: float) -> None:
        """A stage-0 batch starts at ``now``: each image waited since its request arrived
        (``owner``: ``[n]`` indices into ``owners``; one observation step per request)."""
        counts = np.bincount(owner, minlength=len(owners)).tolist()
        for w, count in zip(owners, counts, strict=True):
            observe_many(self.queue_wait, now - w.arrived, count)

    def rejected(self, reason: str) -> None:
        self.metrics.rejections.labels(self.name, self.version, reason).inc()

    def default_plan(self, budget: float, thresholds: tuple[float, ...]) -> None:
        """The budget and thresholds of a request that gives no options (they move under load)."""
        self.metrics.effective_budget.labels(self.name, self.version).set(budget)
        for k, t in enumerate(thresholds):
            self.metrics.exit_threshold.labels(self.name, self.version, str(k)).set(min(t, 1e9))

    def agreement(self, k: int, ratio: float) -> None:
        self.metrics.exit_agreement.labels(self.name, self.version, str(k)).set(ratio)
