"""The engine's queues: request chunks waiting for stage 0, then one queue per later stage.

A small object of its own so that the scheduler (``scheduler.py``) decides from the queues alone,
without reaching into the engine. Every access happens under the engine's condition lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from service.engine.work import Pending, StageBatch


@dataclass
class StageQueues:
    """``pending``: chunks for stage 0 (``waiting`` images); ``stages[k]``: batches for stage k."""

    num_stages: int
    pending: deque[Pending] = field(default_factory=deque)
    stages: list[deque[StageBatch]] = field(init=False)
    waiting: int = 0
    stopping: bool = False

    def __post_init__(self) -> None:
        self.stages = [deque() for _ in range(self.num_stages)]

    def idle(self) -> bool:
        return not self.pending and not any(self.stages)

    def queued_images(self) -> int:
        """Images anywhere in the queues (stage 0's and the survivors')."""
        return self.waiting + sum(len(b) for q in self.stages for b in q)
