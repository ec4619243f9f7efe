"""An engine's settings, built once at the edge (``factory.engine_config`` from the service's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from service.engine.controller import ControllerConfig
from service.engine.guard import GuardConfig

Mode = Literal["run_to_end", "shrink", "rebatch"]
"""The batching mode (``scheduler.py``; docs/engine.md)."""


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
    """The service's default budget (unset: the package's, ``policy.resolve_plan``)."""
