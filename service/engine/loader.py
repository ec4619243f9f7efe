"""Load a model package into a running engine: package -> backend -> warm-up -> workers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from models.package import ModelPackage, load_package
from service.engine.backends import resolve_device
from service.engine.controller import ControllerConfig
from service.engine.engine import EngineConfig, ModelEngine
from service.engine.factory import build_engine, default_buckets, default_max_batch
from service.engine.guard import GuardConfig
from service.engine.precision import choose_backend
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings

log = logging.getLogger("service.engine")


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
    settings pin it (``factory.default_max_batch``)."""
    b, slo, g = settings.batching, settings.slo, settings.guard
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


def load_model(path: str | Path, settings: ServiceSettings, metrics: ServiceMetrics) -> LoadedModel:
    """Load, build the backend, warm up (if configured) and start the engine's workers.

    Raises:
        PackageError: the package is missing or damaged.
        BackendError: the requested backend or device cannot be used.
    """
    threads = torch_threads(settings)
    if threads:
        torch.set_num_threads(threads)
    pkg = load_package(path)
    m = pkg.manifest
    device = resolve_device(settings.device)
    config = engine_config(settings, device)
    served = choose_backend(
        pkg,
        settings.precision,
        settings.backend,
        device,
        threads=settings.intra_op_threads,
        buckets=default_buckets(device, config.max_batch_size),
        batch=config.max_batch_size,
        default_budget=config.default_budget or m.default_budget or 1.0,
        cuda_dtype=settings.torch.dtype,
    )
    pkg, backend = served.package, served.backend
    engine = build_engine(pkg, backend, config, metrics, warmup=settings.warmup)
    metrics.model_info.labels(m.name, m.version, backend.name, backend.device, str(m.num_exits)).set(1)
    metrics.queue_depth.labels(m.name).set(0)
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
    return LoadedModel(pkg, engine, served.precision)
