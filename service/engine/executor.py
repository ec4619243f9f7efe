"""The early-exit executor: run one stage on a batch, answer the images that exit, keep the rest.

After stage ``k`` each image compares its own confidence with its own threshold (images with
different budgets share the batch), the confident ones leave with their answer, and the carried
state of the others is indexed down to a smaller batch for stage ``k + 1`` (MSDNet section 5,
dynamic evaluation; our contract in ``models/multi_exit.py``). Where that smaller batch runs
next is the scheduler's policy (``engine/engine.py``), not this module's.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models.exit_policy import confidences
from models.multi_exit import State
from service.engine.backends import StageBackend
from service.policy import leaving_now


@dataclass(frozen=True)
class ImageResult:
    """One image's answer: ``probs [C]`` (float32 softmax of the exit that answered), its exit.

    NumPy, not torch: the routes shape answers on the event loop, where small torch ops were
    measured at 100+ us each while a worker thread runs a stage (dispatcher contention).
    """

    probs: np.ndarray
    exit: int
    compute_fraction: float


@dataclass(eq=False)
class RequestWork:
    """One request as the engine sees it: ``n`` images, one future for all their answers."""

    n: int
    deadline: float
    """``time.monotonic()`` past which nobody waits for the answers."""
    future: cf.Future[list[ImageResult]] = field(default_factory=cf.Future)
    arrived: float = field(default_factory=time.monotonic)
    results: list[ImageResult | None] = field(init=False)
    remaining: int = field(init=False)
    cancel_reason: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.results = [None] * self.n
        self.remaining = self.n

    @property
    def dropped(self) -> bool:
        """Nobody will read the answers: cancelled, disconnected or past the deadline."""
        return self.cancel_reason is not None or self.future.done() or time.monotonic() > self.deadline

    def answer(self, index: int, result: ImageResult) -> None:
        with self._lock:
            if self.results[index] is None:
                self.remaining -= 1
            self.results[index] = result
            finished = self.remaining == 0
        if finished:
            self._settle(lambda f: f.set_result([r for r in self.results if r is not None]))

    def fail(self, exc: BaseException) -> None:
        self._settle(lambda f: f.set_exception(exc))

    def _settle(self, action: Callable[[cf.Future[list[ImageResult]]], None]) -> None:
        # Cancelled (deadline, disconnect) while it ran: nobody reads it, drop it.
        with contextlib.suppress(cf.InvalidStateError):
            action(self.future)


@dataclass(eq=False)
class StageBatch:
    """Images waiting for (or running) one stage, with their carried state.

    Attributes:
        jobs: ``(request, image index in the request)`` per image, aligned with the batch dim.
        state: the stage input; every tensor ``[n, ...]``.
        thresholds: ``[n, K]`` per-image thresholds.
        max_exit: ``[n]`` per-image deepest exit.
        enqueued: ``time.monotonic()`` when it entered its current queue.
    """

    jobs: list[tuple[RequestWork, int]]
    state: State
    thresholds: Tensor
    max_exit: Tensor
    enqueued: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.jobs)

    def select(self, keep: Tensor) -> StageBatch:
        """The sub-batch where the bool mask ``keep [n]`` is true (state indexed on dim 0)."""
        idx = keep.nonzero().flatten()
        jobs = [self.jobs[i] for i in idx.tolist()]
        state = tuple(t[idx.to(t.device)] for t in self.state)
        return StageBatch(jobs, state, self.thresholds[idx], self.max_exit[idx])

    @staticmethod
    def concat(batches: list[StageBatch]) -> StageBatch:
        """One batch out of several queued at the same stage."""
        if len(batches) == 1:
            return batches[0]
        state = tuple(torch.cat(ts) for ts in zip(*(b.state for b in batches), strict=True))
        return StageBatch(
            [j for b in batches for j in b.jobs],
            state,
            torch.cat([b.thresholds for b in batches]),
            torch.cat([b.max_exit for b in batches]),
            enqueued=min(b.enqueued for b in batches),
        )


@dataclass(eq=False)
class Pending:
    """Images of one request waiting for stage 0, as submitted (tensors are built by a worker).

    Attributes:
        images: the request's whole ``[N, 3, H, W]`` batch; this chunk is ``images[start:stop]``.
    """

    work: RequestWork
    images: Tensor
    start: int
    stop: int
    thresholds: tuple[float, ...]
    max_exit: int
    enqueued: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return self.stop - self.start

    def to_batch(self) -> StageBatch:
        n, k = len(self), len(self.thresholds)
        return StageBatch(
            [(self.work, i) for i in range(self.start, self.stop)],
            (self.images[self.start : self.stop],),
            torch.tensor(self.thresholds, dtype=torch.float32).expand(n, k),
            torch.full((n,), self.max_exit, dtype=torch.int64),
            enqueued=self.enqueued,
        )


@dataclass(frozen=True)
class StageOutcome:
    """What one stage run produced: answered ``(job, result)`` pairs and the survivors."""

    answered: list[tuple[tuple[RequestWork, int], ImageResult]]
    survivors: StageBatch | None


def run_stage(
    backend: StageBackend, k: int, batch: StageBatch, compute_fractions: list[float]
) -> StageOutcome:
    """Run stage ``k`` on ``batch`` and split it at exit ``k``.

    Args:
        compute_fractions: ``[K]`` cumulative FLOPs of each exit over the full network's.
    Returns:
        The answered images and the (smaller) batch that goes on to stage ``k + 1``.
    """
    num_exits = len(compute_fractions)
    next_state, logits = backend.run_stage(k, batch.state)
    logits = logits.cpu()
    conf, _ = confidences(logits)
    leave = leaving_now(conf, batch.thresholds[:, k], batch.max_exit, k, num_exits)
    probs = torch.softmax(logits.float(), dim=-1).numpy()
    answered = [
        (batch.jobs[i], ImageResult(probs[i].copy(), k, compute_fractions[k]))
        for i in leave.nonzero().flatten().tolist()
    ]
    survivors = None
    if not bool(leave.all()):
        rest = StageBatch(batch.jobs, next_state, batch.thresholds, batch.max_exit)
        survivors = rest.select(~leave)
    return StageOutcome(answered, survivors)
