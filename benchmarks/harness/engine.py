"""The engine under test: the one module of the benchmarks that imports ``service``, so a change
of the service's engine API is met here once."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from benchmarks.harness.load import Answer
from service.engine import EngineConfig, ModelEngine, build_engine
from service.engine.backends import resolve_device
from service.engine.controller import ControllerConfig
from service.engine.factory import default_max_batch, freeze_startup_heap
from service.engine.precision import at_int8
from service.errors import QueueFullError
from service.images import ImageLimits, images_to_batch
from service.metrics import ServiceMetrics

__all__ = ["ControllerConfig", "QueueFullError", "resolve_device"]
BATCH_SAMPLES = ("anytime_batch_size_sum", "anytime_batch_size_count")


class StubBackend:
    """Zero-cost stages: preallocated random logits (confidences vary, so a budget below 1 sends
    images out at every exit) and one float of carried state per image, so that the engine's own
    bookkeeping is all that costs."""

    name, device = "stub", "cpu"

    def __init__(self, num_exits: int, num_classes: int, rows: int = 4096, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.logits = [3.0 * torch.randn(rows, num_classes, generator=g) for _ in range(num_exits)]
        self.state = torch.zeros(rows, 1)

    def run_stage(
        self, k: int, state: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        n = state[0].shape[0]
        return (self.state[:n],), self.logits[k][:n]


def make_engine(
    pkg: Any, backend: str = "torch", *, device: str = "cpu", dtype: str = "float32", threads: int = 1,
    batch: int | None = None, **config: Any,
) -> ModelEngine:  # fmt: skip
    """A started engine for the package ``pkg`` as the service builds it (warmed up, its start-up
    heap frozen); ``backend`` ``stub``: :class:`StubBackend`; ``config``: :class:`EngineConfig`
    fields; ``batch``: its ``max_batch_size`` (default: the device's)."""
    if threads:
        torch.set_num_threads(threads)
    m = pkg.manifest
    stub = StubBackend(m.num_exits, len(m.classes)) if backend == "stub" else None
    fields = {"queue_size": 10**6, "intra_op_threads": threads, **config}
    cfg = EngineConfig(max_batch_size=batch or default_max_batch(device), **fields)
    engine = build_engine(
        pkg, stub or backend, cfg, ServiceMetrics(), device=device, dtype=dtype, threads=threads
    )
    freeze_startup_heap()
    return engine


def service_workers() -> int:
    """The worker processes ``python -m service`` starts with its default settings."""
    from service.settings import ServiceSettings
    from service.topology import resolve_workers

    return resolve_workers(ServiceSettings())


def at_precision(pkg: Any, precision: str) -> Any:
    """The package as the service serves it at ``precision``: itself (fp32), or its int8 graphs
    and int8 budget table (``int8``, onnxruntime)."""
    return at_int8(pkg) if precision == "int8" else pkg


def submit(engine: ModelEngine, x: torch.Tensor, exit_plan: Any, timeout_s: float = 60.0) -> Future[Any]:
    """Queue ``x [N, 3, H, W]``; the future gets one answer per image."""
    return engine.submit(x, exit_plan, time.monotonic() + timeout_s).future


def score(got: list[Any], labels: np.ndarray | None = None, final: np.ndarray | None = None) -> Answer:
    """The engine's answers against ``labels`` and the final exit's classes ``final`` ([N] each)."""
    fraction = sum(r.compute_fraction for r in got)
    if labels is None and final is None:  # the hot path of the host-overhead benchmark
        return Answer(len(got), fraction)
    pred = np.array([int(r.probs.argmax()) for r in got])
    right = int((pred == labels).sum()) if labels is not None else 0
    return Answer(len(got), fraction, right, int((pred == final).sum()) if final is not None else 0)


def preprocess(blobs: list[bytes], pre: Any) -> torch.Tensor:
    """Encoded images -> ``[N, 3, H, W]`` as the service preprocesses them."""
    return images_to_batch(blobs, pre, ImageLimits(2**30, 2**30))


def worker_clocks(engine: ModelEngine) -> list[int]:
    """CPU-time clocks of the engine's worker threads (every checkout keeps them in ``_threads``)."""
    return [time.pthread_getcpuclockid(t.ident) for t in engine._threads if t.ident is not None]


def batch_sums(families: Iterable[Any], model: str | None = None) -> dict[int, tuple[float, float]]:
    """Per stage: (images run, stage runs) so far, from the engine's ``anytime_batch_size``
    histogram among Prometheus metric ``families`` (a registry's, or a ``/metrics`` page parsed),
    summed over the other labels (versions, processes); ``model``: only its samples."""
    out: dict[int, tuple[float, float]] = {}
    for family in families:
        for s in family.samples:
            if s.name not in BATCH_SAMPLES or model not in (None, s.labels.get("model")):
                continue
            images, runs = out.get(k := int(s.labels["stage"]), (0.0, 0.0))
            out[k] = (images + s.value, runs) if s.name == BATCH_SAMPLES[0] else (images, runs + s.value)
    return out


def stage_stats(engine: ModelEngine, answered: int) -> tuple[list[float], float]:
    """Mean batch size per stage and FLOPs per answered image, from the stage-run metrics."""
    flops, sums = [0, *engine.flops], batch_sums(engine.metrics.registry.collect(), engine.name)
    ran = [sums.get(k, (0.0, 0.0)) for k in range(engine.num_exits)]
    spent = sum(images * (flops[k + 1] - flops[k]) for k, (images, _) in enumerate(ran))
    return [images / (runs or 1.0) for images, runs in ran], spent / max(answered, 1)
