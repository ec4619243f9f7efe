"""What the engine moves around: requests, their answers, and batches waiting for a stage.

Bookkeeping is per batch and per request, never per image: a batch carries its images' owners,
thresholds, deadlines and exits as NumPy arrays, and a request collects its answers into arrays
under one lock, settling its one future when the last image is answered.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from models.multi_exit import State

if TYPE_CHECKING:
    from service.engine.tracing import RequestTrace


class ImageResult(NamedTuple):
    """One image's answer: ``probs [C]`` (float32 softmax of the exit that answered), its exit.

    NumPy, not torch: the routes shape answers on the event loop, where small torch ops were
    measured at 100+ us each while a worker thread runs a stage (dispatcher contention). A named
    tuple: a request of N images builds N of them when it settles, so they must be cheap.
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
    cancel_reason: str | None = None
    trace: RequestTrace | None = None  # recorded by the engine when tracing is on
    remaining: int = field(init=False)
    _parts: list[tuple[np.ndarray, np.ndarray, int, float, np.ndarray]] = field(
        default_factory=list, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    settled: bool = field(default=False, init=False)
    """The future is done (answered, failed or cancelled): a plain read for the hot path."""

    def __post_init__(self) -> None:
        self.remaining = self.n
        self.future.add_done_callback(self._settled)

    def _settled(self, _: cf.Future[list[ImageResult]]) -> None:
        self.settled = True

    @property
    def gone(self) -> bool:
        """Cancelled or already settled (deadline reached on the route's side, disconnect)."""
        return self.cancel_reason is not None or self.settled

    @property
    def dropped(self) -> bool:
        """Nobody will read the answers: cancelled, disconnected or past the deadline."""
        return self.gone or time.monotonic() > self.deadline

    def answer(
        self, rows: np.ndarray, probs: np.ndarray, exit: int, fraction: float, late: np.ndarray
    ) -> None:
        """Answer images ``rows [m]`` (indices in the request) with ``probs [m, C]`` from ``exit``;
        ``late [m]`` marks deadline exits. The engine answers each image once."""
        with self._lock:
            self._parts.append((rows, probs, exit, fraction, late))
            self.remaining -= len(rows)
            if self.remaining > 0:
                return
            parts, self._parts = self._parts, []
        with contextlib.suppress(cf.InvalidStateError):  # cancelled while it ran
            self.future.set_result(_results(self.n, parts))

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(cf.InvalidStateError):
            self.future.set_exception(exc)


def _results(
    n: int, parts: list[tuple[np.ndarray, np.ndarray, int, float, np.ndarray]]
) -> list[ImageResult]:
    """The request's answers in image order, from the parts answered at each exit."""
    if len(parts) == 1:  # the whole request left at one exit, in order (the common case)
        _, probs, k, fraction, late = parts[0]
        return list(map(ImageResult, probs, repeat(k), repeat(fraction), late.tolist()))
    results: list[ImageResult | None] = [None] * n
    for rows, probs, k, fraction, late in parts:
        for i, p, d in zip(rows.tolist(), probs, late.tolist(), strict=True):
            results[i] = ImageResult(p, k, fraction, d)
    return results  # type: ignore[return-value]


@dataclass(eq=False)
class Pending:
    """Images of one request waiting for stage 0, as submitted (arrays are built by a worker).

    Attributes:
        images: the request's whole ``[N, 3, H, W]`` batch; this chunk is ``images[start:stop]``.
        audit: the thresholds are the budget table's, so the accuracy guard may audit answers.
    """

    work: RequestWork
    images: Tensor
    start: int
    stop: int
    thresholds: tuple[float, ...]
    max_exit: int
    enqueued: float = field(default_factory=time.monotonic)
    audit: bool = True

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(eq=False)
class StageBatch:
    """Images waiting for (or running) one stage, with their carried state.

    Every array is aligned with the batch dim ``n``. ``owner`` indexes ``owners`` and never
    decreases along the batch, so one request's images form one contiguous run (answers are
    delivered per run: one lock per request).

    Attributes:
        owners: the requests the images belong to (a request may appear more than once).
        owner: ``[n]`` index into ``owners``; ``row``: ``[n]`` image index within the request.
        state: the stage input; every tensor ``[n, ...]`` on the backend's device.
        thresholds: ``[n, K]`` float32 per-image thresholds; ``max_exit``: ``[n]`` deepest exit.
        deadline: ``[n]`` the owner's deadline (``time.monotonic()``).
        answered_exit: ``[n]`` exit that already answered the image (-1: not yet). An answered
            image still in a batch is a ``run_to_end`` image or an accuracy-guard shadow.
        answered_class: ``[n]`` class of that answer (for the guard's agreement).
        audit: ``[n]`` the accuracy guard may audit the image's answer. Before it is answered:
            its thresholds are the budget table's (not pinned by the request); after: also it
            left because its confidence passed its threshold (not forced out by ``max_exit`` or a
            deadline, which say nothing about the thresholds).
        last_probs: ``[n, C]`` softmax of the image's latest exit (its anytime answer for a
            deadline exit); None before stage 0.
        enqueued: ``time.monotonic()`` when it entered its current queue.
    """

    owners: list[RequestWork]
    owner: np.ndarray
    row: np.ndarray
    state: State
    thresholds: np.ndarray
    max_exit: np.ndarray
    deadline: np.ndarray
    answered_exit: np.ndarray
    answered_class: np.ndarray
    audit: np.ndarray
    last_probs: np.ndarray | None = None
    enqueued: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.owner)

    @staticmethod
    def from_pending(chunks: Sequence[Pending]) -> StageBatch:
        """One stage-0 batch out of queued request chunks (arrays built in one pass each)."""
        sizes = np.fromiter((len(p) for p in chunks), dtype=np.int64, count=len(chunks))
        n = int(sizes.sum())
        owners = [p.work for p in chunks]
        if len(chunks) == 1:
            p = chunks[0]
            images = p.images if len(p) == len(p.images) else p.images[p.start : p.stop]
            row = np.arange(p.start, p.stop)
        else:
            # A whole request needs no slice (a slice view costs ~1 us, as much as a small copy).
            images = torch.cat(
                [p.images if len(p) == len(p.images) else p.images[p.start : p.stop] for p in chunks]
            )
            starts = np.fromiter((p.start for p in chunks), dtype=np.int64, count=len(chunks))
            # Index of each image within its request: its start plus its offset in the chunk.
            offsets = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            row = np.repeat(starts, sizes) + offsets
        return StageBatch(
            owners,
            np.repeat(np.arange(len(chunks)), sizes),
            row,
            (images,),
            np.repeat(np.array([p.thresholds for p in chunks], dtype=np.float32), sizes, axis=0),
            np.repeat(np.array([p.max_exit for p in chunks], dtype=np.int64), sizes),
            np.repeat(np.array([p.work.deadline for p in chunks], dtype=np.float64), sizes),
            np.full(n, -1, dtype=np.int64),
            np.full(n, -1, dtype=np.int64),
            np.repeat(np.array([p.audit for p in chunks], dtype=np.bool_), sizes),
            enqueued=min(p.enqueued for p in chunks),
        )

    def take(self, idx: np.ndarray, state: State) -> StageBatch:
        """The images at sorted positions ``idx [m]``, with ``state`` already gathered to them."""
        return StageBatch(
            self.owners,
            self.owner[idx],
            self.row[idx],
            state,
            self.thresholds[idx],
            self.max_exit[idx],
            self.deadline[idx],
            self.answered_exit[idx],
            self.answered_class[idx],
            self.audit[idx],
            None if self.last_probs is None else self.last_probs[idx],
            self.enqueued,
        )

    @staticmethod
    def concat(batches: Sequence[StageBatch], state: State) -> StageBatch:
        """One batch out of several queued at the same stage; ``state`` is their joined state."""
        if len(batches) == 1:
            return batches[0]
        offsets = np.cumsum([0, *(len(b.owners) for b in batches[:-1])])
        probs = [b.last_probs for b in batches]
        return StageBatch(
            [w for b in batches for w in b.owners],
            np.concatenate([b.owner + o for b, o in zip(batches, offsets, strict=True)]),
            np.concatenate([b.row for b in batches]),
            state,
            np.concatenate([b.thresholds for b in batches]),
            np.concatenate([b.max_exit for b in batches]),
            np.concatenate([b.deadline for b in batches]),
            np.concatenate([b.answered_exit for b in batches]),
            np.concatenate([b.answered_class for b in batches]),
            np.concatenate([b.audit for b in batches]),
            None if any(p is None for p in probs) else np.concatenate(probs),  # type: ignore[arg-type]
            min(b.enqueued for b in batches),
        )
