"""The vectorised engine against the reference path: padded buckets, array bookkeeping, metering."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, Histogram

from models.exit_policy import first_exit
from models.package import ModelPackage
from service.engine.backends import TorchBackend
from service.engine.controller import ControllerConfig, SloController
from service.engine.costs import StageCosts
from service.engine.graphs import bucket_sizes
from service.engine.metering import observe_many
from service.engine.stage import still_wanted
from service.engine.work import Pending, RequestWork, StageBatch
from service.images import images_to_batch
from service.policy import leaving_now
from tests.service.fixtures import LIMITS, reference_answers
from tests.service.test_engine import FAR, make_engine
from tests.service.test_engine_modes import MODES, check_mixed_arrivals, plans_of


def padded_backend(pkg: ModelPackage) -> TorchBackend:
    """The CUDA path's padded static buffers, run eagerly on the CPU (buckets 1, 2, 4, 8)."""
    return TorchBackend(pkg.model, "cpu", buckets=bucket_sizes(8))


@pytest.mark.parametrize("mode", MODES)
def test_padded_buckets_give_the_reference_answers_under_mixed_budgets_and_arrivals(
    reference_package: ModelPackage, images: list[bytes], mode: str
) -> None:
    pkg = reference_package
    backend = padded_backend(pkg)
    assert backend.padded is not None and not backend.padded.captured
    engine = make_engine(pkg, backend, max_batch_size=8, mode=mode)
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    engine.start()
    try:
        # Uneven request sizes and staggered arrivals: every bucket gets padded batches.
        check_mixed_arrivals(
            engine, pkg, images, x, lambda i: slice(i % 4, len(images) - 5 * (i % 3)), 0.003
        )
    finally:
        engine.stop()


def test_no_image_lost_or_duplicated_with_padding_and_two_workers(
    reference_package: ModelPackage, images: list[bytes]
) -> None:
    pkg = reference_package
    engine = make_engine(pkg, padded_backend(pkg), max_batch_size=8, mode="rebatch", workers=2)
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    plans = plans_of(pkg)
    sent: list[tuple[int, int, int, RequestWork]] = []
    lock = threading.Lock()
    engine.start()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for j in range(6):
            start, n = int(rng.integers(0, len(images) - 6)), int(rng.integers(1, 7))
            p = (seed + j) % len(plans)
            work = engine.submit(x[start : start + n], plans[p], time.monotonic() + FAR)
            with lock:
                sent.append((p, start, n, work))
            work.future.result(timeout=60)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.stop()
    assert len(sent) == 24
    want = {}
    for p, plan in enumerate(plans):
        thresholds = list(plan.thresholds)
        thresholds[plan.max_exit] = 0.0  # the deepest allowed exit takes everything left
        want[p] = [(r.exit, r.class_index) for r in reference_answers(pkg, images, thresholds)]
    for p, start, n, work in sent:  # every image answered once, with its own reference answer
        got = [(r.exit, int(r.probs.argmax())) for r in work.future.result(timeout=0)]
        assert got == want[p][start : start + n]
    assert engine.queues.idle() and engine.queues.waiting == 0


def test_the_served_exit_rule_is_calibrations() -> None:
    """One exit at a time, per image, the served rule sends each image where calibration's
    ``first_exit`` (all exits at once) does, cut at the image's ``max_exit``."""
    rng = np.random.default_rng(0)
    k_exits, n = 3, 64
    conf = rng.random((k_exits, n)).astype(np.float32)
    thresholds = rng.random((n, k_exits)).astype(np.float32)
    thresholds[::7, 0] = conf[0, ::7]  # ties: a confidence equal to its threshold leaves
    thresholds[::5, 1] = 2.0  # a disabled exit
    max_exit = rng.integers(0, k_exits, n)
    served = np.full(n, -1)
    for k in range(k_exits):
        leave = (served < 0) & leaving_now(conf[k], thresholds[:, k], max_exit, k, k_exits)
        served[leave] = k
    for i in range(n):
        want = int(first_exit(torch.from_numpy(conf[:, i : i + 1]), torch.from_numpy(thresholds[i])))
        assert served[i] == min(want, max_exit[i]), i
    assert len(set(served.tolist())) == k_exits  # every exit taken by some image


def test_answers_in_parts_settle_once_in_image_order() -> None:
    work = RequestWork(n=4, deadline=FAR)
    probs = np.eye(4, dtype=np.float32)
    work.answer(np.array([1, 3]), probs[[1, 3]], 0, 0.3, np.array([False, True]))
    assert not work.future.done() and work.remaining == 2
    work.answer(np.array([0, 2]), probs[[0, 2]], 2, 1.0, np.array([False, False]))
    results = work.future.result(timeout=0)
    assert [int(r.probs.argmax()) for r in results] == [0, 1, 2, 3]
    assert [(r.exit, r.compute_fraction, r.deadline_exit) for r in results] == [
        (2, 1.0, False), (0, 0.3, False), (2, 1.0, False), (0, 0.3, True)
    ]  # fmt: skip
    assert work.settled and work.gone


def test_a_cancelled_request_is_gone_without_a_lock() -> None:
    work = RequestWork(n=1, deadline=FAR)
    assert not work.gone
    work.future.cancel()
    assert work.settled and work.gone
    work.answer(np.array([0]), np.ones((1, 3), np.float32), 0, 0.3, np.array([False]))  # no raise


def test_still_wanted_drops_only_images_nobody_waits_for() -> None:
    """A request settled by its answers keeps its answered (shadow) images; one cancelled from
    outside (asyncio cancels the wrapped future: no ``cancel_reason``) or past its deadline
    loses its unanswered ones; with every owner alive the fast path says so with None."""
    done, cancelled, alive = (RequestWork(n=1, deadline=FAR) for _ in range(3))
    late = RequestWork(n=1, deadline=time.monotonic() - 1.0)
    x = torch.zeros(1, 3, 32, 32)
    batch = StageBatch.from_pending(
        [Pending(w, x, 0, 1, (0.5,) * 4, 4) for w in (done, cancelled, alive, late)]
    )
    assert still_wanted(batch.take(np.array([2]), (x,)), time.monotonic()) is None
    done.answer(np.array([0]), np.ones((1, 3), np.float32), 0, 0.3, np.array([False]))
    batch.answered_exit[0] = 0  # its answered image runs on (a guard shadow)
    cancelled.future.cancel()
    keep = still_wanted(batch, time.monotonic())
    assert keep is not None and keep.tolist() == [True, False, True, False]


def test_observe_many_equals_repeated_observations() -> None:
    buckets = (0.1, 0.5, 1.0)
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", ["m"], buckets=buckets, registry=one).labels("x")
    h2 = Histogram("h", "h", ["m"], buckets=buckets, registry=many).labels("x")
    for value, count in [(0.05, 3), (0.5, 1), (0.7, 5), (2.0, 2), (0.1, 0)]:
        for _ in range(count):
            h1.observe(value)
        observe_many(h2, value, count)
    for name in ("h_bucket", "h_sum", "h_count"):
        for le in ("0.1", "0.5", "1.0", "+Inf") if name == "h_bucket" else (None,):
            labels = {"m": "x"} | ({"le": le} if le else {})
            assert one.get_sample_value(name, labels) == pytest.approx(
                many.get_sample_value(name, labels)
            )


def test_the_running_cost_fit_is_least_squares() -> None:
    rng = np.random.default_rng(1)
    costs = StageCosts(1)
    for n in rng.integers(1, 33, 200).tolist():
        costs.observe(0, n, 0.003 + 0.0004 * n + float(rng.normal(0, 1e-4)))
    avg = costs._avg[0]  # the moving averages the line is fitted through
    slope, fixed = np.polyfit(list(avg), list(avg.values()), 1)
    assert costs.fixed(0) == pytest.approx(fixed, rel=1e-6)
    assert costs.estimate(0, 10) == pytest.approx(fixed + 10 * slope, rel=1e-6)


def test_the_controllers_p99_counts_each_image_once() -> None:
    rows: list[tuple[float, float | None]] = [(0.5, None), (1.0, None)]
    weighted = SloController(rows, 1.0, ControllerConfig(p99_target_s=1.0))
    plain = SloController(rows, 1.0, ControllerConfig(p99_target_s=1.0))
    for latency, count in [(0.01, 150), (0.2, 3), (0.05, 40), (0.9, 1)]:
        weighted.observe(latency, count)
        for _ in range(count):
            plain.observe(latency)
    assert weighted.p99() == plain.p99() == 0.2


def test_bucket_sizes_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert bucket_sizes(48) == (1, 2, 4, 8, 16, 32, 48)


def test_a_batch_above_the_largest_bucket_runs_eagerly(reference_package: ModelPackage) -> None:
    pkg = reference_package
    padded, eager = padded_backend(pkg), TorchBackend(pkg.model, "cpu")
    x = torch.randn(11, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for n in (3, 8, 11):  # padded to 4, exactly 8, above every bucket
        state_p, state_e = (x[:n],), (x[:n],)
        for k in range(pkg.manifest.num_exits):
            state_p, logits_p = padded.run_stage(k, state_p)
            state_e, logits_e = eager.run_stage(k, state_e)
            assert logits_p.shape == (n, len(pkg.manifest.classes))
            torch.testing.assert_close(logits_p, logits_e, atol=1e-5, rtol=1e-5)
