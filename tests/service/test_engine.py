"""The engine alone: per-image exits in a shared batch, shrinking, queue bound, drops, drain."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from models.package import ModelPackage
from service.engine import EngineConfig, ModelEngine, build_engine
from service.engine.backends import OnnxBackend, StageBackend, TorchBackend
from service.errors import EngineStoppedError, QueueFullError
from service.images import images_to_batch
from service.metrics import ServiceMetrics
from service.policy import resolve_plan
from tests.service.fixtures import LIMITS, check_answers, reference_answers

FAR = 1e9  # a deadline nobody reaches in a test


def make_engine(pkg: ModelPackage, backend: StageBackend | None = None, **cfg: object) -> ModelEngine:
    """An engine not yet started (tests queue work first), nor warmed up."""
    config = EngineConfig(**{"max_batch_size": 128, "max_delay_s": 0.0, **cfg})  # type: ignore[arg-type]
    backend = backend or TorchBackend(pkg.model, "cpu")
    return build_engine(pkg, backend, config, ServiceMetrics(), warmup=False, start=False)


def sample(engine: ModelEngine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        name, {"model": engine.name, "version": engine.manifest.version, **labels}
    )
    return value or 0.0


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_mixed_budgets_share_a_batch_and_match_the_model_alone(
    reference_package: ModelPackage, images: list[bytes], backend: str
) -> None:
    pkg, m = reference_package, reference_package.manifest
    be: StageBackend = (
        TorchBackend(pkg.model, "cpu")
        if backend == "torch"
        else OnnxBackend(pkg.onnx_paths, "cpu", [g.inputs for g in m.onnx])
    )
    engine = make_engine(pkg, be)
    x = images_to_batch(images, m.preprocessing, LIMITS)
    plans = [
        resolve_plan(m, budget=0.6),
        resolve_plan(m, budget=1.0),
        resolve_plan(m, budget=0.8, max_exit=1),
    ]
    works = [engine.submit(x, p, time.monotonic() + FAR) for p in plans]  # queued before any worker
    engine.start()
    try:
        answers = [w.future.result(timeout=30) for w in works]
    finally:
        engine.stop()
    # All three requests ran as one stage-0 batch, which then shrank at each exit.
    assert sample(engine, "anytime_batch_size_count", stage="0") == 1
    assert sample(engine, "anytime_batch_size_sum", stage="0") == 3 * len(images)
    assert (
        0
        < sample(engine, "anytime_batch_size_sum", stage="2")
        < sample(engine, "anytime_batch_size_sum", stage="1")
        < 3 * len(images)
    )
    for plan, got in zip(plans, answers, strict=True):
        check_answers(pkg, images, plan, got)
    exits = {r.exit for r in answers[0]}
    assert exits == {0, 1, 2}, "budget 0.6 should use every exit on the calibration images"
    assert {r.exit for r in answers[1]} == {2}
    flops = sum(m.exits[r.exit].flops for a in answers for r in a)
    assert sample(engine, "anytime_flops_total") == flops
    assert sample(engine, "anytime_flops_saved_total") == 3 * len(images) * m.exits[-1].flops - flops


def test_a_full_queue_refuses_and_counts(reference_package: ModelPackage) -> None:
    engine = make_engine(reference_package, queue_size=5)
    plan = resolve_plan(reference_package.manifest)
    x = torch.zeros(3, 3, 32, 32)
    engine.submit(x, plan, FAR)
    with pytest.raises(QueueFullError, match="queue holds 5") as err:
        engine.submit(x, plan, FAR)
    assert err.value.headers["Retry-After"] == "1"
    assert sample(engine, "anytime_rejections_total", reason="queue_full") == 1
    assert engine.queue_depth == 3


def test_dropped_requests_cost_no_compute(reference_package: ModelPackage) -> None:
    engine = make_engine(reference_package)
    plan = resolve_plan(reference_package.manifest)
    x = torch.zeros(4, 3, 32, 32)
    gone = engine.submit(x, plan, time.monotonic() + FAR)
    late = engine.submit(x, plan, time.monotonic() - 1.0)  # already past its deadline
    kept = engine.submit(x[:1], plan, time.monotonic() + FAR)
    engine.cancel(gone, "disconnected")
    engine.start()
    try:
        assert len(kept.future.result(timeout=30)) == 1
    finally:
        engine.stop()
    assert gone.future.cancelled() and not late.future.done()
    assert sample(engine, "anytime_batch_size_sum", stage="0") == 1
    assert sample(engine, "anytime_rejections_total", reason="disconnected") == 1


def test_large_requests_are_split_and_stop_drains(reference_package: ModelPackage) -> None:
    engine = make_engine(reference_package, max_batch_size=4, max_delay_s=10.0)
    plan = resolve_plan(reference_package.manifest, budget=1.0)
    work = engine.submit(torch.zeros(10, 3, 32, 32), plan, time.monotonic() + FAR)
    engine.start()
    engine.stop()  # returns only after the queued work is done, despite the long batching delay
    assert len(work.future.result(timeout=0)) == 10
    assert sample(engine, "anytime_batch_size_count", stage="0") == 3  # 4 + 4 + 2
    with pytest.raises(EngineStoppedError):
        engine.submit(torch.zeros(1, 3, 32, 32), plan, FAR)


def test_two_workers_give_the_same_answers(reference_package: ModelPackage, images: list[bytes]) -> None:
    pkg = reference_package
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    plan = resolve_plan(pkg.manifest, budget=0.6)
    engine = make_engine(pkg, workers=2, max_batch_size=4)
    engine.start()
    try:
        works = [
            engine.submit(x[i : i + 3], plan, time.monotonic() + FAR) for i in range(0, len(images), 3)
        ]
        got = [r for w in works for r in w.future.result(timeout=30)]
    finally:
        engine.stop()
    want = reference_answers(pkg, images, pkg.manifest.budget_entry(0.6).thresholds)
    assert [r.exit for r in got] == [w.exit for w in want]
    assert [int(r.probs.argmax()) for r in got] == [w.class_index for w in want]


def test_batching_off_runs_each_request_alone(reference_package: ModelPackage) -> None:
    engine = make_engine(reference_package, batching=False)
    plan = resolve_plan(reference_package.manifest, budget=1.0)
    works = [engine.submit(torch.zeros(2, 3, 32, 32), plan, time.monotonic() + FAR) for _ in range(3)]
    engine.start()
    try:
        for w in works:
            w.future.result(timeout=30)
    finally:
        engine.stop()
    assert sample(engine, "anytime_batch_size_count", stage="0") == 3
    assert sample(engine, "anytime_batch_size_sum", stage="0") == 6


@pytest.mark.gpu
def test_cuda_backends_agree_with_cpu(reference_package: ModelPackage, images: list[bytes]) -> None:
    from service.engine.backends import cuda_works

    if not cuda_works():
        pytest.skip("CUDA does not work on this machine")
    import copy

    pkg, m = reference_package, reference_package.manifest
    x = images_to_batch(images, m.preprocessing, LIMITS)
    plan = resolve_plan(m, budget=0.6)
    cpu_model = copy.deepcopy(pkg.model)
    backends: list[StageBackend] = [
        TorchBackend(cpu_model, "cpu"),
        TorchBackend(copy.deepcopy(pkg.model), "cuda"),
        OnnxBackend(pkg.onnx_paths, "cuda", [g.inputs for g in m.onnx]),
    ]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert backends[2].device == "cuda", "onnxruntime fell back to CPU although CUDA works"
    else:  # a CPU-only onnxruntime build: the backend must say so, not claim CUDA
        assert backends[2].device == "cpu"
    answers = []
    for be in backends:
        engine = make_engine(pkg, be)
        work = engine.submit(x, plan, time.monotonic() + FAR)
        engine.start()
        try:
            answers.append(work.future.result(timeout=60))
        finally:
            engine.stop()
    for got in answers[1:]:
        assert [r.exit for r in got] == [r.exit for r in answers[0]]
        for a, b in zip(got, answers[0], strict=True):
            np.testing.assert_allclose(a.probs, b.probs, atol=1e-3, rtol=0)


class _FlakyBackend:
    """Wraps a backend; fails stage 1 while ``broken`` is set."""

    def __init__(self, inner: StageBackend) -> None:
        self.inner, self.name, self.device, self.broken = inner, inner.name, inner.device, True

    def run_stage(
        self, k: int, state: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        if k == 1 and self.broken:
            raise RuntimeError("stage 1 exploded")
        return self.inner.run_stage(k, state)


def test_a_failing_stage_fails_its_requests_not_the_engine(reference_package: ModelPackage) -> None:
    flaky = _FlakyBackend(TorchBackend(reference_package.model, "cpu"))
    engine = make_engine(reference_package, flaky)
    plan = resolve_plan(reference_package.manifest, budget=1.0)
    engine.start()
    try:
        failed = engine.submit(torch.zeros(2, 3, 32, 32), plan, time.monotonic() + FAR)
        with pytest.raises(RuntimeError, match="exploded"):
            failed.future.result(timeout=30)
        flaky.broken = False
        ok = engine.submit(torch.zeros(2, 3, 32, 32), plan, time.monotonic() + FAR)
        assert [r.exit for r in ok.future.result(timeout=30)] == [2, 2]
    finally:
        engine.stop()
