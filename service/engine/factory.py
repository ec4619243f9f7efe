"""``build_engine``: the one way to assemble an engine (service, benchmarks and tests use it).

Device-aware defaults, chosen by reasoning about where a stage's time goes:

- CPU: per-image cost is flat from a batch of ~8 up (measured, docs/engine.md), so deeper
  batches buy nothing and padding would only add work: ``max_batch_size`` 32, no buckets.
- CUDA: this network is launch-bound on a GPU (a stage costs about the same at 1 or 256
  images), so batches go deeper (``max_batch_size`` 256) and every stage runs as a CUDA graph
  at a power-of-two bucket, padded (``graphs.py``).
"""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

from models.package import ModelPackage
from service.engine.backends import StageBackend, build_backend
from service.engine.engine import EngineConfig, ModelEngine
from service.engine.graphs import bucket_sizes
from service.metrics import ServiceMetrics

CPU_MAX_BATCH = 32
CUDA_MAX_BATCH = 256


def default_max_batch(device: str) -> int:
    """The ``max_batch_size`` a device gets unless the settings pin one."""
    return CUDA_MAX_BATCH if device == "cuda" else CPU_MAX_BATCH


def default_buckets(device: str, max_batch: int) -> tuple[int, ...]:
    """Padded batch sizes: powers of two up to ``max_batch`` on CUDA; none on a CPU."""
    return bucket_sizes(max_batch) if device == "cuda" else ()


def build_engine(
    pkg: ModelPackage,
    backend: StageBackend | str,
    config: EngineConfig | None = None,
    metrics: ServiceMetrics | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int = 0,
    buckets: tuple[int, ...] | None = None,
    warmup: bool = True,
    start: bool = True,
    **overrides: Any,
) -> ModelEngine:
    """An engine for ``pkg``: backend (built here when given by name), warm-up, workers.

    Args:
        backend: a built backend, or ``torch`` | ``onnxruntime`` | ``auto`` to build one on
            ``device`` (an already resolved ``cpu`` or ``cuda``) with ``dtype`` and ``threads``.
        config: the engine settings (default: ``EngineConfig`` with the device's batch size);
            ``overrides`` replace fields of it (``mode="rebatch"``, ...).
        buckets: padded batch sizes of a torch backend built here (default: the device's).
        warmup: run every stage once (seeds the cost model) and mark the engine ready.
        start: start the worker threads (tests queue work first, then start).
    """
    if config is None:
        config = EngineConfig(max_batch_size=default_max_batch(device))
    if overrides:
        config = dataclasses.replace(config, **overrides)
    if isinstance(backend, str):
        if buckets is None:
            buckets = default_buckets(device, config.max_batch_size)
        backend = build_backend(pkg, backend, device, dtype, threads, buckets)
    m = pkg.manifest
    engine = ModelEngine(m.name, m, backend, config, metrics)
    if warmup:
        engine.warmup()
    else:
        engine.ready = True
    if start:
        engine.start()
    return engine


def freeze_startup_heap() -> None:
    """Exempt every object alive now (torch, the models, the app) from the cyclic GC's passes.

    Call once start-up is done. Each request allocates a few container objects (a future, its
    condition, answers), so the collector runs often, and each older-generation pass used to
    walk the whole start-up heap: ``gc.freeze`` took one-image requests on the stub engine from
    ~7,600-9,100 to ~12,100-12,400 images/s (``python -m benchmarks.engine_speed``). Frozen
    objects are never collected, which is what long-lived start-up state needs anyway.
    """
    gc.collect()
    gc.freeze()
