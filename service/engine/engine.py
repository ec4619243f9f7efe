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

import numpy as np
import torch
from torch import Tensor

from models.package import Manifest
from service.engine.backends import StageBackend
from service.engine.config import EngineConfig
from service.engine.controller import SloController
from service.engine.costs import StageCosts
from service.engine.guard import AccuracyGuard
from service.engine.metering import EngineMeters
from service.engine.queues import StageQueues
from service.engine.runner import StageRunner
from service.engine.scheduler import SchedulePolicy, Scheduler
from service.engine.stage import Answers, StageRules, deadline_answers, run_stage, still_wanted
from service.engine.tracing import RequestTrace, record_stage_run
from service.engine.work import Pending, RequestWork, StageBatch
from service.errors import EngineStoppedError, InvalidOptionError, QueueFullError
from service.metrics import ServiceMetrics
from service.policy import ExitPlan, resolve_plan

log = logging.getLogger("service.engine")


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
        self.meters = EngineMeters(self.metrics, name, manifest)
        self.num_exits = manifest.num_exits
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
        self.controller: SloController | None = None
        try:  # refuse at start-up, not with a 422 on every request that gives no budget
            default = self.plan().budget
        except InvalidOptionError as e:
            raise ValueError(f"default budget: {e}") from None
        assert default is not None  # a plan without a pinned threshold has its budget
        if config.controller is not None:  # it starts at the default and steps down the table
            rows = [(b.budget, b.accuracy) for b in manifest.budgets]
            self.controller = SloController(rows, default, config.controller)
        self.ready = False
        self.tracing = False  # record stage runs for traced requests (service/engine/tracing.py)
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

    @property
    def flops(self) -> list[int]:
        """``[K]`` cumulative FLOPs of one image at each exit (the manifest's)."""
        return self.meters.flops

    def plan(
        self, budget: float | None = None, threshold: float | None = None, max_exit: int | None = None
    ) -> ExitPlan:
        """The plan of a request's options now: ``policy.resolve_plan`` with this engine's default
        budget (the SLO controller's, else the service's) and the accuracy guard's shift.

        Raises:
            InvalidOptionError: an option this model does not offer (422).
        """
        return resolve_plan(
            self.manifest,
            budget=budget,
            threshold=threshold,
            max_exit=max_exit,
            default_budget=self.default_budget(),
            shift=self.guard.shift,
        )

    def default_budget(self) -> float | None:
        """The budget a request without one gets before the package's fallback: the SLO
        controller's current one, else the service's setting (``policy.fallback_budget``)."""
        return self.config.default_budget if self.controller is None else self.controller.budget

    def _publish_budget(self) -> None:
        plan = self.plan()  # what a request without options runs under
        assert plan.budget is not None
        self.meters.default_plan(plan.budget, plan.thresholds)

    def submit(
        self,
        images: Tensor,
        plan: ExitPlan,
        deadline: float,
        arrived: float | None = None,
        trace: RequestTrace | None = None,
    ) -> RequestWork:
        """Queue ``images [N, 3, H, W]`` under ``plan`` (from :meth:`plan`); the returned work's
        future gets the answers.

        ``deadline`` and ``arrived`` are ``time.monotonic()`` instants; ``arrived`` (when the
        request reached the service, default now) is the one clock of the queue-wait metric, the
        SLO controller and the deadline. ``trace``: where the stage runs of a traced request are
        recorded (with ``tracing`` on).

        Raises:
            QueueFullError: the queue cannot take ``N`` more images (429).
            EngineStoppedError: the engine is shutting down (503).
        """
        n = images.shape[0]
        work = RequestWork(n=n, deadline=deadline, trace=trace)
        if arrived is not None:
            work.arrived = arrived
        # A request larger than a batch is split so that no batch exceeds max_batch_size.
        step, audit = self.config.max_batch_size, plan.budget is not None
        chunks = [
            Pending(work, images, s, min(s + step, n), plan.thresholds, plan.max_exit, audit=audit)
            for s in range(0, n, step)
        ]
        q = self.queues
        with self._cond:
            if q.stopping:
                raise EngineStoppedError(f"model {self.name!r} is shutting down")
            if q.waiting + n > self.config.queue_size:
                self.meters.rejected("queue_full")
                raise QueueFullError(
                    f"model {self.name!r} has {q.waiting} images queued; the queue holds "
                    f"{self.config.queue_size}, so {n} more do not fit",
                    retry_after_s=self.config.retry_after_s,
                )
            q.pending.extend(chunks)
            q.waiting += n
            self.meters.queue_depth.set(q.waiting)
            self._cond.notify()
        return work

    def cancel(self, work: RequestWork, reason: str) -> None:
        """Drop a request's remaining work (``reason``: deadline, disconnected, ...)."""
        if work.cancel_reason is None and not work.future.done():
            work.cancel_reason = reason
            self.meters.rejected(reason)
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
                    self.meters.queue_depth.set(q.waiting)
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

    def _run(self, k: int, batch: StageBatch) -> None:
        keep = still_wanted(batch, time.monotonic())
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
            self.meters.waited(batch.owners, batch.owner, time.monotonic())
        self.meters.batch_size[k].observe(len(batch))
        cfg = self.config
        rules = StageRules(
            run_to_end=cfg.mode == "run_to_end",
            shadow_fraction=cfg.guard.fraction,
            next_cost_s=self.costs.estimate(k + 1, len(batch)) if k + 1 < self.num_exits else None,
        )
        t0 = time.perf_counter()
        outcome = run_stage(self.runner, k, batch, self.num_exits, rules)
        seconds = time.perf_counter() - t0
        self.costs.observe(k, len(batch), seconds)
        if self.tracing:
            record_stage_run(self.name, k, batch.owners, len(batch), seconds)
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
        self.meters.answered(k, m, int(answers.late.sum()))  # every answer here left at exit k
        now, fraction = time.monotonic(), self.meters.fractions[k]
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
                self.meters.agreement(k, ratio)
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
