"""The engine's CUDA path (skipped without CUDA): graphs at padded buckets, one copy home per stage."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from models.package import ModelPackage
from service.engine import build_engine
from service.engine.backends import TorchBackend, cuda_works
from service.engine.factory import CUDA_MAX_BATCH
from service.engine.graphs import bucket_sizes
from service.images import images_to_batch
from service.metrics import ServiceMetrics
from service.policy import resolve_plan
from tests.service.fixtures import LIMITS
from tests.service.test_engine import FAR, make_engine, sample
from tests.service.test_engine_modes import MODES, plans_of

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_works(), reason="CUDA does not work on this machine"),
]


def _answers(engine: object, x: torch.Tensor, plans: list) -> list[list[tuple[int, int]]]:
    works = [engine.submit(x, p, time.monotonic() + FAR) for p in plans]  # type: ignore[attr-defined]
    return [[(r.exit, int(r.probs.argmax())) for r in w.future.result(timeout=120)] for w in works]


def test_the_device_defaults_capture_graphs_at_deep_buckets(reference_package: ModelPackage) -> None:
    engine = build_engine(copy.deepcopy(reference_package), "torch", device="cuda", start=False)
    assert engine.config.max_batch_size == CUDA_MAX_BATCH
    padded = engine.backend.padded  # type: ignore[attr-defined]
    assert padded is not None and padded.captured
    assert padded.buckets == bucket_sizes(CUDA_MAX_BATCH)


@pytest.mark.parametrize("mode", MODES)
def test_graphs_give_the_eager_answers(
    reference_package: ModelPackage, images: list[bytes], mode: str
) -> None:
    pkg = reference_package
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    plans = plans_of(pkg)
    got = []
    for buckets in (bucket_sizes(32), ()):
        backend = TorchBackend(copy.deepcopy(pkg.model), "cuda", buckets=buckets)
        assert (backend.padded is not None and backend.padded.captured) == bool(buckets)
        engine = make_engine(pkg, backend, max_batch_size=32, mode=mode)
        engine.start()
        try:
            got.append(_answers(engine, x, plans))
        finally:
            engine.stop()
    assert got[0] == got[1]


def test_one_device_to_host_copy_per_stage_run(
    reference_package: ModelPackage, images: list[bytes]
) -> None:
    from torch.profiler import ProfilerActivity, profile

    pkg = reference_package
    backend = TorchBackend(copy.deepcopy(pkg.model), "cuda", buckets=bucket_sizes(32))
    engine = make_engine(pkg, backend, max_batch_size=32)
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    plan = resolve_plan(pkg.manifest, budget=0.6)
    work = engine.submit(x, plan, time.monotonic() + FAR)  # one stage-0 batch, then survivors
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.start()
        try:
            work.future.result(timeout=120)
        finally:
            engine.stop()
        torch.cuda.synchronize()
    runs = sum(sample(engine, "anytime_batch_size_count", stage=str(k)) for k in range(3))
    copies = [e for e in prof.events() if "DtoH" in e.name or "Device -> Pinned" in e.name]
    assert runs >= 2 and len(copies) == runs


def test_half_precision_runs_on_cuda(reference_package: ModelPackage, images: list[bytes]) -> None:
    """fp16 is served only after gpu_check.sh measured it within 0.1 point of fp32; here: it runs
    and answers every image (the accuracy check needs the real test images)."""
    pkg = copy.deepcopy(reference_package)
    engine = build_engine(pkg, "torch", None, ServiceMetrics(), device="cuda", dtype="float16")
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    try:
        got = _answers(engine, x, plans_of(pkg))
    finally:
        engine.stop()
    assert [len(a) for a in got] == [len(images)] * 4
