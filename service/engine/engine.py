"""One model's engine: a queue per stage, dynamic batching at stage 0, worker threads.

Images enter stage 0's queue; a worker takes a batch when it is full or its oldest image has
waited ``max_delay``; after each stage the survivors go to the next stage's queue. What happens
there is the batching mode (``scheduler.py``): ``shrink`` (issue 4) runs each survivor batch
alone, deepest stage first, so a batch shrinks at each exit; ``rebatch`` (issue 7) lets the
survivors of several batches gather in stage ``k``'s queue and run together; ``run_to_end`` keeps
every image in its batch to the last stage (answers still leave early; the baseline).

The engine knows nothing of HTTP: callers get a ``concurrent.futures.Future`` per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from models.package import Manifest
from service.engine.backends import StageBackend
from service.engine.controller import ControllerConfig, SloController
from service.engine.costs import StageCosts
from service.engine.executor import ImageResult, Pending, RequestWork, StageBatch
from service.engine.guard import AccuracyGuard, GuardConfig
from service.engine.scheduler import next_batch, wait_timeout
from service.engine.stage import Job, StageRules, deadline_answers, run_stage
from service.errors import EngineStoppedError, InvalidOptionError, QueueFullError
from service.metrics import ServiceMetrics
from service.policy import ExitPlan, budget_thresholds

Mode = Literal["run_to_end", "shrink", "rebatch"]

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
    mode: Mode = "shrink"
    rebatch_max_wait_s: float = 0.02
    """Cap of the adaptive wait of a stage ``k > 0`` queue in ``rebatch`` mode."""
    controller: ControllerConfig | None = None
    guard: GuardConfig = field(default_factory=GuardConfig)
    default_budget: float | None = None
    """The service's default budget (else the package's): where the controller starts."""


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
        self.costs = StageCosts(self.num_exits)
        self.guard = AccuracyGuard(self.num_exits, config.guard)
        default = config.default_budget or manifest.default_budget or 1.0
        try:  # refuse at start-up, not with a 422 on every request that gives no budget
            budget_thresholds(manifest, default)
        except InvalidOptionError as e:
            raise ValueError(f"default budget {default}: {e}") from None
        self.controller = (
            None
            if config.controller is None
            else SloController(
                [(b.budget, b.accuracy) for b in manifest.budgets], default, config.controller
            )
        )
        self._base_budget = default
        self.ready = False
        self._publish_budget()

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
            for rep in range(2):  # the second pass seeds the stage cost model (the first is lazy)
                state: tuple[Tensor, ...] = (torch.randn(n, 3, h, w),)
                for k in range(self.num_exits):
                    t0 = time.perf_counter()
                    state, logits = self.backend.run_stage(k, state)
                    logits.cpu()
                    if rep:
                        self.costs.observe(k, n, time.perf_counter() - t0)
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

    def default_budget(self) -> float:
        """Budget of a request that pins neither a budget nor a threshold (the controller's)."""
        return self.controller.budget if self.controller is not None else self._base_budget

    def _publish_budget(self) -> None:
        budget = self.default_budget()
        self.metrics.effective_budget.labels(self.name).set(budget)
        thresholds = budget_thresholds(self.manifest, budget)  # checked at start-up
        for k, (t, shift) in enumerate(zip(thresholds, self.guard.shift, strict=True)):
            self.metrics.exit_threshold.labels(self.name, str(k)).set(min(t + shift, 1e9))

    def submit(
        self, images: Tensor, plan: ExitPlan, deadline: float, arrived: float | None = None
    ) -> RequestWork:
        """Queue ``images [N, 3, H, W]`` under ``plan``; the returned work's future gets the answers.

        ``deadline`` and ``arrived`` are ``time.monotonic()`` instants; ``arrived`` (when the
        request reached the service, default now) is the one clock of the queue-wait metric, the
        SLO controller and the deadline.

        Raises:
            QueueFullError: the queue cannot take ``N`` more images (429).
            EngineStoppedError: the engine is shutting down (503).
        """
        n = images.shape[0]
        work = RequestWork(n=n, deadline=deadline)
        if arrived is not None:
            work.arrived = arrived
        # A request larger than a batch is split so that no batch exceeds max_batch_size.
        step = self.config.max_batch_size
        thresholds = plan.thresholds
        if plan.budget is not None and any(self.guard.shift):
            # The guard tightens budget-derived thresholds only; a pinned threshold is the client's.
            thresholds = tuple(t + d for t, d in zip(thresholds, self.guard.shift, strict=True))
        chunks = [
            Pending(
                work,
                images,
                s,
                min(s + step, n),
                thresholds,
                plan.max_exit,
                audit=plan.budget is not None,
            )
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

    # -- scheduling (the policy lives in scheduler.py) -------------------------------------------
    def _next_batch(self) -> tuple[int, StageBatch | list[Pending]] | None:
        return next_batch(self)

    def _wait_timeout(self) -> float | None:
        return wait_timeout(self)

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
        # Answered images still here (run_to_end, guard shadows) run on even when nobody waits.
        keep = torch.tensor(
            [
                not w.dropped or bool(a >= 0)
                for (w, _), a in zip(batch.jobs, batch.answered_exit, strict=True)
            ],
            dtype=torch.bool,
        )
        if not bool(keep.any()):
            return
        if not bool(keep.all()):
            batch = batch.select(keep)  # dropped requests cost nothing from here on
        m, name = self.metrics, self.name
        late: list[tuple[Job, ImageResult]] = []
        if k > 0:
            late, rest = deadline_answers(k, batch, self.costs.estimate(k, len(batch)), self.fractions)
            self._answer(k - 1, late)
            if rest is None:
                return
            batch = rest
        else:
            now = time.monotonic()
            for w, _ in batch.jobs:
                m.queue_wait.labels(name).observe(now - w.arrived)
        m.batch_size.labels(name, str(k)).observe(len(batch))
        cfg = self.config
        rules = StageRules(
            run_to_end=cfg.mode == "run_to_end",
            shadow_fraction=cfg.guard.fraction,
            next_cost_s=self.costs.estimate(k + 1, len(batch)) if k + 1 < self.num_exits else None,
        )
        t0 = time.perf_counter()
        outcome = run_stage(self.backend, k, batch, self.fractions, rules)
        self.costs.observe(k, len(batch), time.perf_counter() - t0)
        if outcome.survivors is not None:
            with self._cond:
                outcome.survivors.enqueued = time.monotonic()
                self.queues[k + 1].append(outcome.survivors)
                self._cond.notify()
        self._answer(k, outcome.answered)
        if outcome.agreements:
            self._audit(outcome.agreements)
        self._control()

    def _answer(self, k: int, answered: list[tuple[Job, ImageResult]]) -> None:
        """Deliver answers of exit ``k`` and count them (metrics, the controller's latencies)."""
        if not answered:
            return
        m, name = self.metrics, self.name
        spent = self.flops[k] * len(answered)  # every answer here left at exit k
        m.exit_images.labels(name, str(k)).inc(len(answered))
        m.flops.labels(name).inc(spent)
        m.flops_saved.labels(name).inc(self.flops[-1] * len(answered) - spent)
        fraction = m.compute_fraction.labels(name)
        late = sum(r.deadline_exit for _, r in answered)
        if late:
            m.deadline_exits.labels(name).inc(late)
        now = time.monotonic()
        for (work, i), result in answered:
            fraction.observe(self.fractions[k])
            if self.controller is not None:
                self.controller.observe(now - work.arrived)
            work.answer(i, result)

    def _audit(self, agreements: list[tuple[int, bool]]) -> None:
        tightened = self.guard.record(agreements)
        for k in {k for k, _ in agreements}:
            ratio = self.guard.agreement(k)
            if ratio is not None:
                self.metrics.exit_agreement.labels(self.name, str(k)).set(ratio)
        if tightened:
            log.warning("model %s: agreement below the floor, tightened exits %s", self.name, tightened)
            self._publish_budget()

    def queued_seconds(self) -> float:
        """Estimated seconds to run everything queued (full passes at the largest batch)."""
        b = self.config.max_batch_size
        per_image = self.costs.remaining(0, b) / b
        with self._cond:  # other workers append to and pop from the queues under this lock
            queued = self._waiting + sum(len(x) for q in self.queues for x in q)
        return queued * per_image

    def _control(self) -> None:
        if self.controller is None:
            return
        fill = self._waiting / self.config.queue_size
        if self.controller.update(self.queued_seconds(), fill):
            log.info("model %s: effective budget %.3f", self.name, self.controller.budget)
            self._publish_budget()
