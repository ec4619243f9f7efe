"""One model's engine: a queue per stage, dynamic batching at stage 0, worker threads.

Images enter stage 0's queue; a worker takes a batch when it is full or its oldest image has
waited ``max_delay``; after each stage the survivors go to the next stage's queue. The policy
here is **shrink** (issue 4): a stage ``k > 0`` batch runs as soon as a worker is free, alone,
deepest stage first, so a batch simply shrinks at each exit. Cross-request rebatching at exits
(issue 7) is then a different choice of *when* to take from queues ``k > 0``, not a rewrite.

The engine knows nothing of HTTP: callers get a ``concurrent.futures.Future`` per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from models.package import Manifest
from service.engine.backends import StageBackend
from service.engine.executor import Pending, RequestWork, StageBatch, run_stage
from service.errors import EngineStoppedError, QueueFullError
from service.metrics import ServiceMetrics
from service.policy import ExitPlan

log = logging.getLogger("service.engine")


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32
    max_delay_s: float = 0.0
    queue_size: int = 256
    workers: int = 1
    batching: bool = True
    retry_after_s: int = 1
    intra_op_threads: int = 0
    """torch intra-op threads, set in each worker thread too (OpenMP's setting is per thread)."""


class ModelEngine:
    """Early-exit inference for one model package (see the module docstring)."""

    def __init__(
        self,
        name: str,
        manifest: Manifest,
        backend: StageBackend,
        config: EngineConfig,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.name = name
        self.manifest = manifest
        self.backend = backend
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.num_exits = manifest.num_exits
        self.fractions = [e.compute_fraction for e in manifest.exits]
        self.flops = [e.flops for e in manifest.exits]
        self.pending: deque[Pending] = deque()  # stage 0's queue: chunks of submitted requests
        self.queues: list[deque[StageBatch]] = [deque() for _ in range(self.num_exits)]
        self._waiting = 0  # images in stage 0's queue
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.ready = False

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.config.workers):
            t = threading.Thread(target=self._worker, name=f"engine-{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def warmup(self) -> None:
        """Run every stage at batch 1 and at the largest batch so first requests are not slow."""
        h, w = self.manifest.preprocessing.input_size
        for n in sorted({1, self.config.max_batch_size}):
            state: tuple[Tensor, ...] = (torch.randn(n, 3, h, w),)
            for k in range(self.num_exits):
                state, _ = self.backend.run_stage(k, state)
        self.ready = True

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new work, finish every queued image (drain), then stop the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self.ready = False

    # -- requests --------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._waiting

    def submit(self, images: Tensor, plan: ExitPlan, deadline: float) -> RequestWork:
        """Queue ``images [N, 3, H, W]`` under ``plan``; the returned work's future gets the answers.

        Raises:
            QueueFullError: the queue cannot take ``N`` more images (429).
            EngineStoppedError: the engine is shutting down (503).
        """
        n = images.shape[0]
        work = RequestWork(n=n, deadline=deadline)
        # A request larger than a batch is split so that no batch exceeds max_batch_size.
        step = self.config.max_batch_size
        chunks = [
            Pending(work, images, s, min(s + step, n), plan.thresholds, plan.max_exit)
            for s in range(0, n, step)
        ]
        with self._cond:
            if self._stopping:
                raise EngineStoppedError(f"model {self.name!r} is shutting down")
            if self._waiting + n > self.config.queue_size:
                self.metrics.rejections.labels(self.name, "queue_full").inc()
                raise QueueFullError(
                    f"model {self.name!r} has {self._waiting} images queued; the queue holds "
                    f"{self.config.queue_size}, so {n} more do not fit",
                    retry_after_s=self.config.retry_after_s,
                )
            self.pending.extend(chunks)
            self._waiting += n
            self.metrics.queue_depth.labels(self.name).set(self._waiting)
            self._cond.notify()
        return work

    def cancel(self, work: RequestWork, reason: str) -> None:
        """Drop a request's remaining work (``reason``: deadline, disconnected, ...)."""
        if work.cancel_reason is None and not work.future.done():
            work.cancel_reason = reason
            self.metrics.rejections.labels(self.name, reason).inc()
        work.future.cancel()

    # -- scheduling (the policy lives here) --------------------------------------------------------
    def _next_batch(self) -> tuple[int, StageBatch | list[Pending]] | None:
        """Under the lock: the stage and work to run now, or None to wait. Deepest stage first."""
        for k in range(self.num_exits - 1, 0, -1):
            if self.queues[k]:
                return k, self.queues[k].popleft()
        q = self.pending
        if not q:
            return None
        cfg = self.config
        full = self._waiting >= cfg.max_batch_size
        waited = time.monotonic() - q[0].enqueued >= cfg.max_delay_s
        if cfg.batching and not (full or waited or self._stopping):
            return None
        taken = [q.popleft()]
        if cfg.batching:
            size = len(taken[0])
            while q and size + len(q[0]) <= cfg.max_batch_size:
                size += len(q[0])
                taken.append(q.popleft())
        self._waiting -= sum(len(p) for p in taken)
        self.metrics.queue_depth.labels(self.name).set(self._waiting)
        return 0, taken

    def _wait_timeout(self) -> float | None:
        if not self.pending:
            return None
        return max(0.0, self.pending[0].enqueued + self.config.max_delay_s - time.monotonic())

    def _idle(self) -> bool:
        return not self.pending and not any(self.queues)

    def _worker(self) -> None:
        if self.config.intra_op_threads:
            torch.set_num_threads(self.config.intra_op_threads)
        while True:
            with self._cond:
                picked = self._next_batch()
                while picked is None:
                    if self._stopping and self._idle():
                        return
                    self._cond.wait(self._wait_timeout())
                    picked = self._next_batch()
            k, work = picked
            try:
                batch = (
                    work
                    if isinstance(work, StageBatch)
                    else StageBatch.concat([p.to_batch() for p in work])
                )
                self._run(k, batch)
            except Exception as e:  # never let one bad batch kill the worker: fail its requests
                log.exception("model %s: stage %d failed", self.name, k)
                owners = (
                    [w for w, _ in work.jobs] if isinstance(work, StageBatch) else [p.work for p in work]
                )
                for w in {id(w): w for w in owners}.values():
                    w.fail(e)

    def _run(self, k: int, batch: StageBatch) -> None:
        keep = torch.tensor([not w.dropped for w, _ in batch.jobs], dtype=torch.bool)
        if not bool(keep.any()):
            return
        if not bool(keep.all()):
            batch = batch.select(keep)  # dropped requests cost nothing from here on
        m, name = self.metrics, self.name
        if k == 0:
            now = time.monotonic()
            for w, _ in batch.jobs:
                m.queue_wait.labels(name).observe(now - w.arrived)
        m.batch_size.labels(name, str(k)).observe(len(batch))
        outcome = run_stage(self.backend, k, batch, self.fractions)
        if outcome.survivors is not None:
            with self._cond:
                outcome.survivors.enqueued = time.monotonic()
                self.queues[k + 1].append(outcome.survivors)
                self._cond.notify()
        if outcome.answered:
            spent = self.flops[k] * len(outcome.answered)  # every answer here left at exit k
            m.exit_images.labels(name, str(k)).inc(len(outcome.answered))
            m.flops.labels(name).inc(spent)
            m.flops_saved.labels(name).inc(self.flops[-1] * len(outcome.answered) - spent)
            fraction = m.compute_fraction.labels(name)
            for _ in outcome.answered:
                fraction.observe(self.fractions[k])
        for (work, i), result in outcome.answered:
            work.answer(i, result)
