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

from models.multi_exit import State


@dataclass(frozen=True)
class ImageResult:
    """One image's answer: ``probs [C]`` (float32 softmax of the exit that answered), its exit.

    NumPy, not torch: the routes shape answers on the event loop, where small torch ops were
    measured at 100+ us each while a worker thread runs a stage (dispatcher contention).
    """

    probs: np.ndarray
    exit: int
    compute_fraction: float
    deadline_exit: bool = False
    """Answered early because running the next stage would have missed the request's deadline."""


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
    def gone(self) -> bool:
        """Cancelled or already settled (deadline reached on the route's side, disconnect)."""
        return self.cancel_reason is not None or self.future.done()

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
        answered_exit: ``[n]`` exit that already answered the image (-1: not yet). An answered
            image still in a batch is a ``run_to_end`` image or an accuracy-guard shadow.
        answered_class: ``[n]`` class of that answer (for the guard's agreement).
        audit: ``[n]`` bool: the accuracy guard may audit the image's answer. Before it is
            answered: its thresholds are the budget table's (not pinned by the request); after:
            also it left because its confidence passed its threshold (not forced out by
            ``max_exit`` or a deadline, which say nothing about the thresholds).
        last_probs: ``[n, C]`` softmax of the image's latest exit (its anytime answer for a
            deadline exit); None before stage 0.
        enqueued: ``time.monotonic()`` when it entered its current queue.
    """

    jobs: list[tuple[RequestWork, int]]
    state: State
    thresholds: Tensor
    max_exit: Tensor
    answered_exit: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    answered_class: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    last_probs: np.ndarray | None = None
    enqueued: float = field(default_factory=time.monotonic)
    audit: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __post_init__(self) -> None:
        n = len(self.jobs)
        if self.answered_exit.shape[0] != n:
            self.answered_exit = torch.full((n,), -1, dtype=torch.int64)
            self.answered_class = torch.full((n,), -1, dtype=torch.int64)
        if self.audit.shape[0] != n:
            self.audit = torch.ones(n, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.jobs)

    def select(self, keep: Tensor) -> StageBatch:
        """The sub-batch where the bool mask ``keep [n]`` is true (state indexed on dim 0)."""
        idx = keep.nonzero().flatten()
        jobs = [self.jobs[i] for i in idx.tolist()]
        state = tuple(t[idx.to(t.device)] for t in self.state)
        probs = None if self.last_probs is None else self.last_probs[idx.numpy()]
        return StageBatch(
            jobs,
            state,
            self.thresholds[idx],
            self.max_exit[idx],
            self.answered_exit[idx],
            self.answered_class[idx],
            probs,
            self.enqueued,
            self.audit[idx],
        )

    @staticmethod
    def concat(batches: list[StageBatch]) -> StageBatch:
        """One batch out of several queued at the same stage."""
        if len(batches) == 1:
            return batches[0]
        state = tuple(torch.cat(ts) for ts in zip(*(b.state for b in batches), strict=True))
        probs = [b.last_probs for b in batches]
        return StageBatch(
            [j for b in batches for j in b.jobs],
            state,
            torch.cat([b.thresholds for b in batches]),
            torch.cat([b.max_exit for b in batches]),
            torch.cat([b.answered_exit for b in batches]),
            torch.cat([b.answered_class for b in batches]),
            None if any(p is None for p in probs) else np.concatenate(probs),  # type: ignore[arg-type]
            enqueued=min(b.enqueued for b in batches),
            audit=torch.cat([b.audit for b in batches]),
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
    audit: bool = True
    """The thresholds are the budget table's, so the accuracy guard may audit these answers."""

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
            audit=torch.full((n,), self.audit, dtype=torch.bool),
        )
