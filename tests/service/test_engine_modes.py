"""The engine: batching modes, rebatching at exits, deadline exits, drain, under load."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from models.package import ModelPackage
from service.engine.backends import StageBackend, TorchBackend
from service.engine.engine import ModelEngine
from service.engine.work import RequestWork
from service.images import images_to_batch
from service.policy import ExitPlan, resolve_plan
from tests.service.fixtures import LIMITS, check_answers, reference_answers
from tests.service.test_engine import FAR, make_engine, sample

MODES = ["run_to_end", "shrink", "rebatch"]


def plans_of(pkg: ModelPackage) -> list[ExitPlan]:
    m = pkg.manifest
    return [
        resolve_plan(m, budget=0.6),
        resolve_plan(m, budget=1.0),
        resolve_plan(m, budget=0.8, max_exit=1),
        resolve_plan(m, threshold=0.0),  # everything leaves at exit 0
    ]


def check_mixed_arrivals(
    engine: ModelEngine,
    pkg: ModelPackage,
    images: list[bytes],
    x: torch.Tensor,
    part_of: Callable[[int], slice],
    pause_s: float = 0.002,
) -> None:
    """Submit every plan of ``pkg`` twice, request ``i`` holding ``x[part_of(i)]`` and arriving
    ``pause_s * (i % 3)`` after the previous one; every answer must be the model's alone."""
    works = []
    for i, plan in enumerate(plans_of(pkg) * 2):
        part = part_of(i)
        works.append((plan, part, engine.submit(x[part], plan, time.monotonic() + FAR)))
        time.sleep(pause_s * (i % 3))
    for plan, part, work in works:
        check_answers(pkg, images[part], plan, work.future.result(timeout=60))


@pytest.mark.parametrize("mode", MODES)
def test_mixed_budgets_and_arrival_times_match_the_model_alone(
    reference_package: ModelPackage, images: list[bytes], mode: str
) -> None:
    pkg = reference_package
    engine = make_engine(pkg, max_batch_size=8, mode=mode)
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    engine.start()
    try:
        # Staggered arrivals and uneven request sizes: batches mix requests and stages.
        check_mixed_arrivals(engine, pkg, images, x, lambda i: slice(0, len(images) - 3 * (i % 3)))
    finally:
        engine.stop()
    if mode == "run_to_end":
        # Every image runs every stage: stage 2 sees as many images as stage 0.
        assert sample(engine, "anytime_batch_size_sum", stage="2") == sample(
            engine, "anytime_batch_size_sum", stage="0"
        )
    else:
        assert sample(engine, "anytime_batch_size_sum", stage="2") < sample(
            engine, "anytime_batch_size_sum", stage="0"
        )


def test_rebatch_merges_survivors_of_several_batches(
    reference_package: ModelPackage, images: list[bytes]
) -> None:
    pkg = reference_package
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    plan = resolve_plan(pkg.manifest, budget=0.6)
    counts = {}
    for mode in ("shrink", "rebatch"):
        engine = make_engine(pkg, max_batch_size=6, mode=mode, rebatch_max_wait_s=30.0)
        for k in range(engine.num_exits):  # all fixed cost: only a full batch is efficient
            engine.costs.observe(k, 1, 10.0)
            engine.costs.observe(k, 6, 10.0)
        works = [engine.submit(x[i : i + 6], plan, time.monotonic() + FAR) for i in range(0, 24, 6)]
        engine.start()
        try:
            for i, w in zip(range(0, 24, 6), works, strict=True):
                check_answers(pkg, images[i : i + 6], plan, w.future.result(timeout=60))
        finally:
            engine.stop()
        counts[mode] = [sample(engine, "anytime_batch_size_count", stage=str(k)) for k in range(3)]
        sums = [sample(engine, "anytime_batch_size_sum", stage=str(k)) for k in range(3)]
        if mode == "rebatch":
            # Survivors of the four stage-0 batches run together: full batches, fewest runs.
            assert counts[mode][1] == -(-sums[1] // 6) and counts[mode][2] == -(-sums[2] // 6)
    assert counts["rebatch"][0] == counts["shrink"][0] == 4
    assert counts["rebatch"][1] < counts["shrink"][1]


@pytest.mark.parametrize("mode", MODES)
def test_no_image_lost_or_answered_twice_under_load(
    reference_package: ModelPackage, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[tuple[int, int]] = Counter()
    lock = threading.Lock()
    original = RequestWork.answer

    def counting(self: RequestWork, rows: np.ndarray, *rest: Any) -> None:
        with lock:
            calls.update((id(self), i) for i in rows.tolist())
        original(self, rows, *rest)

    monkeypatch.setattr(RequestWork, "answer", counting)
    pkg = reference_package
    engine = make_engine(pkg, max_batch_size=8, mode=mode, workers=2, queue_size=10_000)
    plans = plans_of(pkg)
    works: list[RequestWork] = []
    engine.start()

    def client(seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for j in range(15):
            n = int(torch.randint(1, 6, (1,), generator=g))
            x = torch.randn(n, 3, 32, 32, generator=g)
            w = engine.submit(x, plans[(seed + j) % len(plans)], time.monotonic() + FAR)
            with lock:
                works.append(w)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        for w in works:
            assert len(w.future.result(timeout=60)) == w.n
    finally:
        engine.stop()
    total = sum(w.n for w in works)
    assert sum(calls.values()) == total and set(calls.values()) == {1}
    assert sum(sample(engine, "anytime_exit_images_total", exit=str(k)) for k in range(3)) == total


def test_stop_drains_every_stage_queue(reference_package: ModelPackage) -> None:
    engine = make_engine(reference_package, max_batch_size=4, mode="rebatch", rebatch_max_wait_s=60.0)
    for k in range(engine.num_exits):
        engine.costs.observe(k, 1, 60.0)  # queues k > 0 would wait a minute for a full batch
        engine.costs.observe(k, 4, 60.0)
    plan = resolve_plan(reference_package.manifest, budget=1.0)
    works = [engine.submit(torch.randn(3, 3, 32, 32), plan, time.monotonic() + FAR) for _ in range(5)]
    engine.start()
    t0 = time.monotonic()
    engine.stop()
    assert time.monotonic() - t0 < 30
    assert all(len(w.future.result(timeout=0)) == 3 for w in works)
    assert engine.queues.idle()


class _SlowBackend:
    """Stages after the first sleep ``delay`` seconds (a deep network on a busy device)."""

    def __init__(self, inner: StageBackend, delay: float) -> None:
        self.inner, self.name, self.device, self.delay = inner, inner.name, inner.device, delay

    def run_stage(
        self, k: int, state: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        if k > 0:
            time.sleep(self.delay)
        return self.inner.run_stage(k, state)


@pytest.mark.parametrize("mode", MODES)
def test_a_deadline_gives_the_latest_exit_instead_of_nothing(
    reference_package: ModelPackage, images: list[bytes], mode: str
) -> None:
    pkg = reference_package
    slow = _SlowBackend(TorchBackend(pkg.model, "cpu"), delay=0.3)
    engine = make_engine(pkg, slow, mode=mode, max_batch_size=32)
    engine.warmup()  # measures the slow stages: the engine knows stage 1 costs 0.3 s
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    plan = resolve_plan(pkg.manifest, budget=1.0)  # would run every image to exit 2
    engine.start()
    try:
        got = engine.submit(x, plan, time.monotonic() + 0.25).future.result(timeout=30)
        relaxed = engine.submit(x[:2], plan, time.monotonic() + FAR).future.result(timeout=30)
    finally:
        engine.stop()
    exit0 = reference_answers(pkg, images, [0.0, 0.0, 0.0])
    assert [r.exit for r in got] == [0] * len(images)
    assert all(r.deadline_exit for r in got)
    for r, w in zip(got, exit0, strict=True):
        torch.testing.assert_close(torch.from_numpy(r.probs), w.probs, atol=1e-4, rtol=0)
    assert [(r.exit, r.deadline_exit) for r in relaxed] == [(2, False)] * 2
    assert sample(engine, "anytime_deadline_exits_total") == len(images)
