"""When each stage queue runs: the batching modes (called under the engine's lock).

- ``shrink`` and ``run_to_end``: a stage ``k > 0`` batch runs as soon as a worker is free, alone,
  deepest stage first; the batch that left stage 0 goes through to its end.
- ``rebatch``: the survivors of any number of batches wait together in stage ``k``'s queue (DREX,
  arXiv 2512.15705). A queue is *due* when it holds an efficient batch (one whose run spends at
  most a quarter of its time on the stage's fixed per-batch cost, from the measured cost line;
  a full batch at most), when an image's deadline needs it, or when its oldest image has waited
  its limit; the deepest due queue runs first. With none
  due, the worker runs the queue holding the most images (the largest batch amortises a run's
  fixed cost best), so a small queue keeps gathering survivors from later batches meanwhile.
  Nothing idles: a lone queue runs at once. The limit adapts from the measured cost of the stage:
  one run of it at a full batch (ski rental: waiting at most what a run costs bounds the latency
  added, while each merge saves the stage's fixed per-batch cost), capped by
  ``rebatch_max_wait_s``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from service.engine.executor import Pending, StageBatch

if TYPE_CHECKING:
    from service.engine.engine import ModelEngine

Picked = tuple[int, StageBatch | list[Pending]]


def next_batch(engine: ModelEngine) -> Picked | None:
    """The stage and work to run now, or None to wait."""
    if engine.config.mode == "rebatch":
        return _rebatch(engine)
    else:
        for k in range(engine.num_exits - 1, 0, -1):
            if engine.queues[k]:
                return k, engine.queues[k].popleft()
    return _stage0(engine)


def wait_timeout(engine: ModelEngine) -> float | None:
    """Seconds until the next queue may become ready by waiting alone (None: until notified)."""
    now = time.monotonic()
    times = []
    if engine.pending:
        times.append(engine.pending[0].enqueued + engine.config.max_delay_s - now)
    if engine.config.mode == "rebatch":
        for k in range(1, engine.num_exits):
            if engine.queues[k]:
                times.append(engine.queues[k][0].enqueued + stage_limit(engine, k) - now)
    return max(0.0, min(times)) if times else None


def stage_limit(engine: ModelEngine, k: int) -> float:
    """How long the oldest image of stage ``k``'s queue may wait for more (adaptive, see above)."""
    return min(engine.config.rebatch_max_wait_s, engine.costs.estimate(k, engine.config.max_batch_size))


def _rebatch(engine: ModelEngine) -> Picked | None:
    sizes = {k: sum(len(b) for b in engine.queues[k]) for k in range(1, engine.num_exits)}
    due = [k for k, n in sizes.items() if n and _due(engine, k, n)]
    if due:
        k = max(due)
        return k, _take(engine, k)
    cap = engine.config.max_batch_size
    waiting = {k: min(n, cap) for k, n in sizes.items() if n}
    if engine.pending and (not waiting or min(engine._waiting, cap) > max(waiting.values())):
        picked = _stage0(engine)
        if picked is not None or not waiting:
            return picked
    if not waiting:
        return None
    k = max(waiting, key=lambda j: (waiting[j], j))  # the largest batch; ties: the deepest
    return k, _take(engine, k)


def _due(engine: ModelEngine, k: int, n: int) -> bool:
    cap = engine.config.max_batch_size
    if n >= min(cap, engine.costs.efficient_batch(k)) or engine._stopping:
        return True
    q, now = engine.queues[k], time.monotonic()
    if now - q[0].enqueued >= stage_limit(engine, k):
        return True
    # An image whose deadline would be missed after the wait runs (or gets its anytime answer) now.
    need = engine.costs.remaining(k, n) + stage_limit(engine, k)
    return any(w.deadline - now < need for b in q for w, _ in b.jobs)


def _take(engine: ModelEngine, k: int) -> StageBatch:
    """Merge queued batches of stage ``k`` up to ``max_batch_size`` images (at least one)."""
    q = engine.queues[k]
    taken = [q.popleft()]
    size = len(taken[0])
    while q and size + len(q[0]) <= engine.config.max_batch_size:
        size += len(q[0])
        taken.append(q.popleft())
    return StageBatch.concat(taken)


def _stage0(engine: ModelEngine) -> Picked | None:
    q = engine.pending
    if not q:
        return None
    cfg = engine.config
    full = engine._waiting >= cfg.max_batch_size
    waited = time.monotonic() - q[0].enqueued >= cfg.max_delay_s
    if cfg.batching and not (full or waited or engine._stopping):
        return None
    taken = [q.popleft()]
    if cfg.batching:
        size = len(taken[0])
        while q and size + len(q[0]) <= cfg.max_batch_size:
            size += len(q[0])
            taken.append(q.popleft())
    engine._waiting -= sum(len(p) for p in taken)
    engine.metrics.queue_depth.labels(engine.name).set(engine._waiting)
    return 0, taken
