"""Where engines live: per worker process (today's), or one engine process per device that
front-end processes feed through shared memory (``--engine-topology shared``)."""

from __future__ import annotations

import os
from typing import Literal

from service.settings import ServiceSettings


def resolve_topology(settings: ServiceSettings) -> Literal["per-worker", "shared"]:
    """``auto``: one engine process per device where there is a device to share (CUDA, or the
    simulated one), per-worker engines on a CPU (measured: docs/deployment.md)."""
    if settings.engine_topology != "auto":
        return settings.engine_topology
    if settings.simulated_device.enabled:
        return "shared"
    from service.engine.backends import resolve_device  # imports torch

    return "shared" if resolve_device(settings.device) == "cuda" else "per-worker"


MAX_AUTO_WORKERS = 8


def resolve_workers(settings: ServiceSettings) -> int:
    """``--workers``: a number as given; ``auto``: one per core this process may use, at most
    :data:`MAX_AUTO_WORKERS` (each process costs a model's memory)."""
    if settings.workers != "auto":
        return settings.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_AUTO_WORKERS))
