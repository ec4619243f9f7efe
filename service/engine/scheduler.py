"""When each stage queue runs: the batching modes (called under the engine's lock).

- ``shrink`` and ``run_to_end``: a stage ``k > 0`` batch runs as soon as a worker is free, alone,
  deepest stage first; the batch that left stage 0 goes through to its end.
- ``rebatch``: the survivors of any number of batches wait together in stage ``k``'s queue (DREX,
  arXiv 2512.15705). A queue is *due* when it holds an efficient batch (one whose run spends at
  most a quarter of its time on the stage's fixed per-batch cost, from the measured cost line;
  a full batch at most), when an image's deadline needs it, or when its oldest image has waited
  its limit; the deepest due queue runs first. With none due, the worker runs the queue holding
  the most images (the largest batch amortises a run's fixed cost best), so a small queue keeps
  gathering survivors from later batches meanwhile. Nothing idles: a lone queue runs at once.
  The limit adapts from the measured cost of the stage: one run of it at a full batch (ski
  rental: waiting at most what a run costs bounds the latency added, while each merge saves the
  stage's fixed per-batch cost), capped by ``rebatch_max_wait_s``.

The scheduler only picks; the worker joins what it picked into one batch outside the lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.engine.costs import StageCosts
from service.engine.queues import StageQueues
from service.engine.work import Pending, StageBatch

Picked = tuple[int, list[StageBatch] | list[Pending]]


@dataclass(frozen=True)
class SchedulePolicy:
    """The batching settings the scheduler decides by (from ``EngineConfig``)."""

    mode: str
    max_batch_size: int
    max_delay_s: float
    batching: bool
    rebatch_max_wait_s: float


class Scheduler:
    """Picks the next stage and work from ``StageQueues`` (see the module docstring)."""

    def __init__(self, policy: SchedulePolicy, costs: StageCosts) -> None:
        self.policy = policy
        self.costs = costs

    def next_batch(self, q: StageQueues) -> Picked | None:
        """The stage and work to run now, or None to wait."""
        if self.policy.mode == "rebatch":
            return self._rebatch(q)
        for k in range(q.num_stages - 1, 0, -1):
            if q.stages[k]:
                return k, [q.stages[k].popleft()]
        return self._stage0(q)

    def wait_timeout(self, q: StageQueues) -> float | None:
        """Seconds until a queue may become ready by waiting alone (None: until notified)."""
        now = time.monotonic()
        times = []
        if q.pending:
            times.append(q.pending[0].enqueued + self.policy.max_delay_s - now)
        if self.policy.mode == "rebatch":
            for k in range(1, q.num_stages):
                if q.stages[k]:
                    times.append(q.stages[k][0].enqueued + self.stage_limit(k) - now)
        return max(0.0, min(times)) if times else None

    def stage_limit(self, k: int) -> float:
        """How long the oldest image of stage ``k``'s queue may wait for more (adaptive)."""
        p = self.policy
        return min(p.rebatch_max_wait_s, self.costs.estimate(k, p.max_batch_size))

    def _rebatch(self, q: StageQueues) -> Picked | None:
        sizes = {k: sum(len(b) for b in q.stages[k]) for k in range(1, q.num_stages)}
        due = [k for k, n in sizes.items() if n and self._due(q, k, n)]
        if due:
            k = max(due)
            return k, self._take(q, k)
        cap = self.policy.max_batch_size
        waiting = {k: min(n, cap) for k, n in sizes.items() if n}
        if q.pending and (not waiting or min(q.waiting, cap) > max(waiting.values())):
            picked = self._stage0(q)
            if picked is not None or not waiting:
                return picked
        if not waiting:
            return None
        k = max(waiting, key=lambda j: (waiting[j], j))  # the largest batch; ties: the deepest
        return k, self._take(q, k)

    def _due(self, q: StageQueues, k: int, n: int) -> bool:
        cap = self.policy.max_batch_size
        if n >= min(cap, self.costs.efficient_batch(k)) or q.stopping:
            return True
        queue, now = q.stages[k], time.monotonic()
        if now - queue[0].enqueued >= self.stage_limit(k):
            return True
        # An image whose deadline would be missed after the wait runs (or gets its anytime answer).
        need = self.costs.remaining(k, n) + self.stage_limit(k)
        return min(float(b.deadline.min()) for b in queue) - now < need

    def _take(self, q: StageQueues, k: int) -> list[StageBatch]:
        """Queued batches of stage ``k`` up to ``max_batch_size`` images (at least one)."""
        queue = q.stages[k]
        taken = [queue.popleft()]
        size = len(taken[0])
        while queue and size + len(queue[0]) <= self.policy.max_batch_size:
            size += len(queue[0])
            taken.append(queue.popleft())
        return taken

    def _stage0(self, q: StageQueues) -> Picked | None:
        queue, p = q.pending, self.policy
        if not queue:
            return None
        full = q.waiting >= p.max_batch_size
        waited = time.monotonic() - queue[0].enqueued >= p.max_delay_s
        if p.batching and not (full or waited or q.stopping):
            return None
        taken = [queue.popleft()]
        if p.batching:
            size = len(taken[0])
            while queue and size + len(queue[0]) <= p.max_batch_size:
                size += len(queue[0])
                taken.append(queue.popleft())
        q.waiting -= sum(len(c) for c in taken)
        return 0, taken
