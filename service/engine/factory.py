"""From a model package to a started engine, one path: ``load_model`` (settings) and
``build_engine`` (benchmarks and tests) both end in ``build_engine``, the only caller of
``build_backend``.

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
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from models.package import ModelPackage, load_package
from service.engine.backends import StageBackend, build_backend, resolve_device
from service.engine.choices import BackendChoices
from service.engine.config import EngineConfig
from service.engine.controller import ControllerConfig
from service.engine.engine import ModelEngine
from service.engine.graphs import bucket_sizes
from service.engine.guard import GuardConfig
from service.engine.precision import Served, choose_backend
from service.metrics import ServiceMetrics
from service.policy import fallback_budget
from service.settings import Precision, ServiceSettings

CPU_MAX_BATCH = 32
CUDA_MAX_BATCH = 256

log = logging.getLogger("service.engine")


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


@dataclass
class LoadedModel:
    """A served model: its package (manifest, files) and its engine."""

    package: ModelPackage
    engine: ModelEngine
    precision: str = "fp32"

    @property
    def name(self) -> str:
        return self.package.manifest.name


def torch_threads(settings: ServiceSettings) -> int:
    """torch's intra-op threads: its own override, else the shared setting (0 = torch's default)."""
    own = settings.torch.intra_op_threads
    return settings.intra_op_threads if own is None else own


def engine_config(settings: ServiceSettings, device: str = "cpu") -> EngineConfig:
    """The engine settings of ``settings``; ``max_batch_size`` is the device's default unless the
    settings pin it (:func:`default_max_batch`). The simulated device stands in for a GPU, so it
    batches as deep as one (its stages cost a launch plus a little per image, as a GPU's do)."""
    b, slo, g = settings.batching, settings.slo, settings.guard
    if settings.simulated_device.enabled:
        device = "cuda"
    pinned = "max_batch_size" in b.model_fields_set
    controller = None
    if slo.p99_target_ms is not None:
        controller = ControllerConfig(
            p99_target_s=slo.p99_target_ms / 1000.0,
            window_s=slo.window_s,
            interval_s=slo.interval_ms / 1000.0,
            max_accuracy_loss=slo.max_accuracy_loss,
        )
    return EngineConfig(
        max_batch_size=b.max_batch_size if pinned else default_max_batch(device),
        max_delay_s=b.max_delay_ms / 1000.0,
        queue_size=b.queue_size,
        workers=b.workers,
        batching=b.enabled,
        retry_after_s=settings.retry_after_s,
        intra_op_threads=torch_threads(settings),
        mode=b.mode,
        rebatch_max_wait_s=b.rebatch_max_wait_ms / 1000.0,
        controller=controller,
        guard=GuardConfig(g.fraction, g.window, g.floor, g.step, g.min_samples),
        default_budget=settings.default_budget,
    )


def load_model(
    path: str | Path,
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    choices: BackendChoices | None = None,
    *,
    name: str | None = None,
    version: str | None = None,
) -> LoadedModel:
    """Load the package at ``path`` and start its engine as ``settings`` say (:func:`build_engine`).

    Args:
        choices: with several worker processes, where ``auto``'s choice is shared: the first
            worker measures, the others build what it chose (``choices.py``).
        name, version: what the model is served as, in place of its manifest's (a model
            repository names it by its directories).

    Raises:
        PackageError: the package is missing or damaged.
        BackendError: the requested backend or device cannot be used.
    """
    threads = torch_threads(settings)
    if threads:
        torch.set_num_threads(threads)
    pkg = load_package(path)
    if name is not None or version is not None:
        served_as = {"name": name or pkg.manifest.name, "version": version or pkg.manifest.version}
        pkg = dataclasses.replace(pkg, manifest=pkg.manifest.model_copy(update=served_as))
    m = pkg.manifest
    device = resolve_device(settings.device)
    config = engine_config(settings, device)

    def start(backend: str, precision: Precision) -> tuple[ModelEngine, Served]:
        if settings.simulated_device.enabled:  # a measuring tool: the real backend is not built
            served = Served(pkg, simulated_backend(pkg, settings), "fp32")
            return build_engine(pkg, served.backend, config, metrics, warmup=settings.warmup), served
        served = choose_backend(
            pkg,
            precision,
            backend,
            device,
            threads=settings.intra_op_threads,
            buckets=default_buckets(device, config.max_batch_size),
            batch=config.max_batch_size,
            default_budget=fallback_budget(m, config.default_budget),
            cuda_dtype=settings.torch.dtype,
        )
        engine = build_engine(served.package, served.backend, config, metrics, warmup=settings.warmup)
        return engine, served

    auto = settings.backend == "auto" or settings.precision == "auto"
    chosen: str | None = None
    if auto and choices is not None:
        with choices.deciding(path):  # the others wait while the first worker measures
            chosen = choices.get(path)
            if chosen is None:
                engine, served = start(settings.backend, settings.precision)
                choices.put(path, f"{engine.backend.name} {served.precision}")
    if chosen is not None:  # what the settings name stays as named; only "auto" follows the choice
        name, precision = chosen.split(" ")
        engine, served = start(
            name if settings.backend == "auto" else settings.backend,
            cast(Precision, precision) if settings.precision == "auto" else settings.precision,
        )
    elif not (auto and choices is not None):
        engine, served = start(settings.backend, settings.precision)
    backend = engine.backend
    metrics.model_info.labels(m.name, m.version, backend.name, backend.device, str(m.num_exits)).set(1)
    metrics.queue_depth.labels(m.name, m.version).set(0)
    log.info(
        "loaded model %s v%s from %s: %d exits, backend %s on %s, %s",
        m.name,
        m.version,
        path,
        m.num_exits,
        backend.name,
        backend.device,
        served.precision,
    )
    return LoadedModel(served.package, engine, served.precision)


def simulated_backend(pkg: ModelPackage, settings: ServiceSettings) -> StageBackend:
    """The simulated device's backend for ``pkg`` (``service/engine/simulated.py``)."""
    from service.engine.simulated import SimulatedBackend, SimulatedDevice

    sim = settings.simulated_device
    device = SimulatedDevice(sim.lock_file)
    return SimulatedBackend(pkg.model, device, sim.launch_ms / 1e3, sim.per_image_us / 1e6)


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
