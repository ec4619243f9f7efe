"""The engine under test: the one module of the benchmarks that imports ``service``, so a change
of the service's engine API is met here once."""

from __future__ import annotations

import time
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


def stage_stats(engine: ModelEngine, answered: int) -> tuple[list[float], float]:
    """Mean batch size per stage and FLOPs per answered image, from the stage-run metrics."""
    flops, sizes, spent = [0, *engine.flops], [], 0.0
    # Summed over the other labels (a version label, in checkouts that have one).
    sums: dict[tuple[str, str], float] = {}
    for family in engine.metrics.registry.collect():
        for sample in family.samples:
            if (
                sample.name.startswith("anytime_batch_size_")
                and sample.labels.get("model") == engine.name
            ):
                key = (sample.name, sample.labels.get("stage", ""))
                sums[key] = sums.get(key, 0.0) + sample.value
    for k in range(engine.num_exits):
        total = sums.get(("anytime_batch_size_sum", str(k)), 0.0)
        sizes.append(total / (sums.get(("anytime_batch_size_count", str(k)), 0.0) or 1.0))
        spent += total * (flops[k + 1] - flops[k])
    return sizes, spent / max(answered, 1)
