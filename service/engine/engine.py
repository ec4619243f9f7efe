"""One model's engine: a queue per stage, dynamic batching at stage 0, worker threads.

Images enter stage 0's queue; a worker takes a batch when it is full or its oldest image has
waited ``max_delay``; after each stage the survivors go to the next stage's queue. What happens
there is the batching mode (``scheduler.py``): ``shrink`` runs each survivor batch alone, deepest
stage first, so a batch shrinks at each exit; ``rebatch`` lets the survivors of several batches
gather in stage ``k``'s queue and run together; ``run_to_end`` keeps every image in its batch to
the last stage (answers still leave early; the baseline).

The engine knows nothing of HTTP: callers get a ``concurrent.futures.Future`` per request. Build
one with ``service.engine.factory.build_engine``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from models.package import Manifest
from service.engine.backends import StageBackend
from service.engine.controller import ControllerConfig, SloController
from service.engine.costs import StageCosts
from service.engine.guard import AccuracyGuard, GuardConfig
from service.engine.metering import observe_many
from service.engine.queues import StageQueues
from service.engine.runner import StageRunner
from service.engine.scheduler import SchedulePolicy, Scheduler
from service.engine.stage import Answers, StageRules, deadline_answers, run_stage
from service.engine.work import Pending, RequestWork, StageBatch
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
        self.runner = StageRunner(backend)
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.num_exits = manifest.num_exits
        self.fractions = [e.compute_fraction for e in manifest.exits]
        self.flops = [e.flops for e in manifest.exits]
        self.queues = StageQueues(self.num_exits)
        self.costs = StageCosts(self.num_exits)
        self.scheduler = Scheduler(
            SchedulePolicy(
                config.mode,
                config.max_batch_size,
                config.max_delay_s,
                config.batching,
                config.rebatch_max_wait_s,
            ),
            self.costs,
        )
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
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
        # Metric children resolved once: ``labels()`` costs a lock and a dict lookup per call.
        m, name = self.metrics, name
        self._m_exit = [m.exit_images.labels(name, str(k)) for k in range(self.num_exits)]
        self._m_batch = [m.batch_size.labels(name, str(k)) for k in range(self.num_exits)]
        self._m_flops, self._m_saved = m.flops.labels(name), m.flops_saved.labels(name)
        self._m_fraction, self._m_wait = m.compute_fraction.labels(name), m.queue_wait.labels(name)
        self._m_late, self._m_depth = m.deadline_exits.labels(name), m.queue_depth.labels(name)

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
                    state, _ = self.runner.step(k, state)
                    if rep:
                        self.costs.observe(k, n, time.perf_counter() - t0)
        self.ready = True

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new work, finish every queued image (drain), then stop the workers."""
        with self._cond:
            self.queues.stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self.ready = False

    # -- requests --------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self.queues.waiting

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
        thresholds = plan.thresholds
        if plan.budget is not None and any(self.guard.shift):
            # The guard tightens budget-derived thresholds only; a pinned threshold is the client's.
            thresholds = tuple(t + d for t, d in zip(thresholds, self.guard.shift, strict=True))
        # A request larger than a batch is split so that no batch exceeds max_batch_size.
        step, audit = self.config.max_batch_size, plan.budget is not None
        chunks = [
            Pending(work, images, s, min(s + step, n), thresholds, plan.max_exit, audit=audit)
            for s in range(0, n, step)
        ]
        q = self.queues
        with self._cond:
            if q.stopping:
                raise EngineStoppedError(f"model {self.name!r} is shutting down")
            if q.waiting + n > self.config.queue_size:
                self.metrics.rejections.labels(self.name, "queue_full").inc()
                raise QueueFullError(
                    f"model {self.name!r} has {q.waiting} images queued; the queue holds "
                    f"{self.config.queue_size}, so {n} more do not fit",
                    retry_after_s=self.config.retry_after_s,
                )
            q.pending.extend(chunks)
            q.waiting += n
            self._m_depth.set(q.waiting)
            self._cond.notify()
        return work

    def cancel(self, work: RequestWork, reason: str) -> None:
        """Drop a request's remaining work (``reason``: deadline, disconnected, ...)."""
        if work.cancel_reason is None and not work.future.done():
            work.cancel_reason = reason
            self.metrics.rejections.labels(self.name, reason).inc()
        work.future.cancel()

    # -- the worker ------------------------------------------------------------------------------
    def _worker(self) -> None:
        if self.config.intra_op_threads:
            torch.set_num_threads(self.config.intra_op_threads)
        with torch.inference_mode():  # once for the thread's life (see ``inference.py``)
            self._work()

    def _work(self) -> None:
        q = self.queues
        while True:
            with self._cond:
                picked = self.scheduler.next_batch(q)
                while picked is None:
                    if q.stopping and q.idle():
                        return
                    self._cond.wait(self.scheduler.wait_timeout(q))
                    picked = self.scheduler.next_batch(q)
                if picked[0] == 0:
                    self._m_depth.set(q.waiting)
            k, work = picked
            try:
                if k == 0:
                    batch = StageBatch.from_pending(work)  # type: ignore[arg-type]
                else:
                    batches: list[StageBatch] = work  # type: ignore[assignment]
                    batch = StageBatch.concat(batches, self.runner.join([b.state for b in batches]))
                self._run(k, batch)
            except Exception as e:  # never let one bad batch kill the worker: fail its requests
                log.exception("model %s: stage %d failed", self.name, k)
                owners = [p.work for p in work] if k == 0 else [w for b in work for w in b.owners]  # type: ignore[union-attr]
                for w in {id(w): w for w in owners}.values():
                    w.fail(e)

    def _alive(self, batch: StageBatch) -> np.ndarray | None:
        """``[n]`` images someone still waits for, or already answered (they run on regardless:
        ``run_to_end`` images and guard shadows); None when that is every image (the common
        case, decided with one scalar check per request and one reduction). A request settled
        because all its images were answered (``remaining == 0``) drops nothing: its images still
        here are answered ones."""
        owners_alive = all(
            w.cancel_reason is None and (not w.settled or w.remaining == 0) for w in batch.owners
        )
        if owners_alive and batch.deadline.min() >= time.monotonic():
            return None
        gone = np.fromiter(
            (w.cancel_reason is not None or w.settled for w in batch.owners),
            dtype=np.bool_,
            count=len(batch.owners),
        )
        keep = ~gone[batch.owner] & (batch.deadline >= time.monotonic())
        return keep | (batch.answered_exit >= 0)

    def _run(self, k: int, batch: StageBatch) -> None:
        keep = self._alive(batch)
        if keep is not None and not keep.all():
            if not keep.any():
                return
            idx = np.flatnonzero(keep)  # dropped requests cost nothing from here on
            batch = batch.take(idx, self.runner.gather(batch.state, idx))
        if k > 0:
            late, rest = deadline_answers(k, batch, self.costs.estimate(k, len(batch)), self.runner)
            if late is not None:
                self._answer(late)
            if rest is None:
                return
            batch = rest
        else:
            now = time.monotonic()
            for w, count in zip(
                batch.owners, np.bincount(batch.owner, minlength=len(batch.owners)).tolist(), strict=True
            ):
                observe_many(self._m_wait, now - w.arrived, count)
        self._m_batch[k].observe(len(batch))
        cfg = self.config
        rules = StageRules(
            run_to_end=cfg.mode == "run_to_end",
            shadow_fraction=cfg.guard.fraction,
            next_cost_s=self.costs.estimate(k + 1, len(batch)) if k + 1 < self.num_exits else None,
        )
        t0 = time.perf_counter()
        outcome = run_stage(self.runner, k, batch, self.num_exits, rules)
        self.costs.observe(k, len(batch), time.perf_counter() - t0)
        if outcome.survivors is not None:
            with self._cond:
                outcome.survivors.enqueued = time.monotonic()
                self.queues.stages[k + 1].append(outcome.survivors)
                self._cond.notify()
        self._answer(outcome.answered)
        if outcome.agreements:
            self._audit(outcome.agreements)
        self._control()

    def _answer(self, answers: Answers) -> None:
        """Deliver the answers of one exit, one call per request, and count them."""
        m = len(answers)
        if not m:
            return
        k = answers.exit
        spent = self.flops[k] * m  # every answer here left at exit k
        self._m_exit[k].inc(m)
        self._m_flops.inc(spent)
        self._m_saved.inc(self.flops[-1] * m - spent)
        observe_many(self._m_fraction, self.fractions[k], m)
        late = int(answers.late.sum())
        if late:
            self._m_late.inc(late)
        now, fraction = time.monotonic(), self.fractions[k]
        for start, stop in answers.runs():
            work = answers.owners[int(answers.owner[start])]
            if self.controller is not None:
                self.controller.observe(now - work.arrived, stop - start)
            work.answer(
                answers.row[start:stop],
                answers.probs[start:stop],
                k,
                fraction,
                answers.late[start:stop],
            )

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
            queued = self.queues.queued_images()
        return queued * per_image

    def _control(self) -> None:
        if self.controller is None:
            return
        fill = self.queues.waiting / self.config.queue_size
        if self.controller.update(self.queued_seconds(), fill):
            log.info("model %s: effective budget %.3f", self.name, self.controller.budget)
            self._publish_budget()
