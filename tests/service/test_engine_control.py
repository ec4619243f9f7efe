"""The stage cost model, the SLO controller and the accuracy guard, alone and in the engine."""

from __future__ import annotations

import time

import pytest
import torch

from models.exit_policy import NEVER_EXIT
from models.package import ModelPackage
from service.engine.controller import ControllerConfig, SloController, eligible_budgets
from service.engine.costs import StageCosts
from service.engine.guard import AccuracyGuard, GuardConfig
from service.engine.runner import StageRunner
from service.engine.stage import StageOutcome, StageRules, run_stage
from service.engine.work import Pending, RequestWork, StageBatch
from service.images import images_to_batch
from service.policy import resolve_plan
from tests.service.fixtures import LIMITS
from tests.service.test_engine import FAR, make_engine, sample
from tests.service.test_engine_modes import check_answers


def test_stage_costs_fit_fixed_and_per_image_parts() -> None:
    costs = StageCosts(2)
    for n in (1, 8, 32):
        costs.observe(1, n, 0.002 + 0.0005 * n)
    assert costs.fixed(1) == pytest.approx(0.002)
    assert costs.estimate(1, 16) == pytest.approx(0.010)
    # A quarter of the run on the fixed part: 0.002 <= 0.25 * (0.002 + 0.0005 n) <=> n >= 12.
    assert costs.efficient_batch(1) == pytest.approx(12.0)
    assert costs.estimate(0, 16) == 0.0  # never measured
    costs.observe(0, 4, 0.004)  # one size only: all of it per image
    assert costs.estimate(0, 8) == pytest.approx(0.008)
    for _ in range(50):  # the moving average follows a slower machine
        costs.observe(1, 32, 0.1)
    assert costs.estimate(1, 32) > 0.05


def test_controller_steps_down_under_pressure_and_back_when_it_eases() -> None:
    cfg = ControllerConfig(p99_target_s=0.1, interval_s=0.0, up_after=2)
    c = SloController([(0.6, None), (0.8, None), (1.0, None)], 0.8, cfg)
    assert c.rows == [0.6, 0.8] and c.budget == 0.8  # never above the default
    assert not c.update(drain_s=0.05)  # between low and high: hold
    for _ in range(3):
        c.observe(0.09)
    assert c.update(drain_s=0.0) and c.budget == 0.6
    assert not c.update(drain_s=0.5)  # already at the cheapest row
    assert c.p99() == 0.0  # the old budget's latencies were dropped
    assert not c.update(drain_s=0.01)  # calm once: not yet
    assert c.update(drain_s=0.01) and c.budget == 0.8  # calm twice in a row: restore
    # A filling queue steps down before any latency shows it.
    assert c.update(drain_s=0.0, queue_fill=0.9) and c.budget == 0.6


def test_controller_decides_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("service.engine.controller.time.monotonic", lambda: clock[0])
    cfg = ControllerConfig(p99_target_s=0.1, interval_s=0.5, up_after=1)
    c = SloController([(0.4, None), (0.6, None), (0.8, None), (1.0, None)], 1.0, cfg)
    assert c.update(drain_s=1.0) and c.budget == 0.8  # the first decision is due at once
    clock[0] += 0.3
    assert not c.update(drain_s=1.0) and c.budget == 0.8  # still inside the interval: hold
    clock[0] += 0.25
    assert c.update(drain_s=1.0) and c.budget == 0.6  # 0.55 s after the last step
    clock[0] += 0.1
    assert not c.update(drain_s=0.0) and c.budget == 0.6  # calm, but too soon to step back up
    clock[0] += 0.5
    assert c.update(drain_s=0.0) and c.budget == 0.8
    # Latencies leave the p99 window after window_s (2 s), measured on the same clock.
    c.observe(0.09)
    assert c.p99() == 0.09
    clock[0] += 2.5
    assert c.p99() == 0.0


def test_accuracy_loss_cap_sets_the_controllers_floor() -> None:
    table = [(0.3, 0.80), (0.4, 0.895), (0.5, 0.905), (0.7, 0.91), (1.0, 0.912)]
    assert eligible_budgets(table, 1.0, None) == [0.3, 0.4, 0.5, 0.7, 1.0]
    assert eligible_budgets(table, 1.0, 0.01) == [0.5, 0.7, 1.0]  # 0.4 is 1.7 points below
    assert eligible_budgets(table, 0.7, 0.02) == [0.4, 0.5, 0.7]  # measured from the default row
    # Without measured accuracies nothing below the default can be vouched for.
    assert eligible_budgets([(0.5, None), (1.0, 0.9)], 1.0, 0.05) == [1.0]
    # A default between rows runs as the row below it: that row is its reference, not a step.
    assert eligible_budgets([(0.5, 0.9), (0.9, 0.9)], 0.8, 0.05) == [0.8]
    assert eligible_budgets(table, 0.55, None) == [0.3, 0.4, 0.55]
    assert eligible_budgets(table, 0.55, 0.015) == [0.4, 0.55]  # 0.4: 1 point below row 0.5
    cfg = ControllerConfig(p99_target_s=0.1, interval_s=0.0, max_accuracy_loss=0.01)
    c = SloController(table, 1.0, cfg)
    for _ in range(5):
        c.update(drain_s=1.0)  # far over the target
    assert c.budget == 0.5  # the floor, not the table's cheapest row


def test_guard_measures_agreement_and_tightens_below_the_floor() -> None:
    g = AccuracyGuard(3, GuardConfig(fraction=0.1, window=10, floor=0.9, step=0.05, min_samples=4))
    assert g.record([(0, True)] * 3 + [(0, False)]) == [0]  # 3/4 < 0.9 after 4 samples
    assert g.shift == (0.05, 0.0, 0.0) and g.agreement(0) is None  # judged afresh
    assert g.record([(1, True)] * 10) == [] and g.agreement(1) == 1.0
    measuring = AccuracyGuard(3, GuardConfig(fraction=0.1, floor=None, min_samples=1))
    assert measuring.record([(0, False)] * 5) == [] and measuring.shift == (0.0, 0.0, 0.0)


def test_guard_shadows_audit_without_changing_answers(
    reference_package: ModelPackage, images: list[bytes]
) -> None:
    pkg = reference_package
    guard = GuardConfig(fraction=1.0, window=100, floor=1.01, step=0.01, min_samples=2)
    engine = make_engine(pkg, guard=guard)
    x = images_to_batch(images, pkg.manifest.preprocessing, LIMITS)
    plan = resolve_plan(pkg.manifest, budget=0.6)
    engine.start()
    try:
        got = engine.submit(x, plan, time.monotonic() + FAR).future.result(timeout=60)
        check_answers(pkg, images, plan, got)  # shadows never answer twice or change an answer
        early = sum(r.exit < 2 for r in got)
        # Every early answer ran on to exit 2: stage 2 saw all 24 images.
        deadline = time.monotonic() + 10
        while sample(engine, "anytime_batch_size_sum", stage="2") < len(images):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        engine.stop()
    assert early > 0
    # A floor above 1 is always missed: every audited exit was tightened once and exported.
    assert all(engine.guard.shift[k] > 0 for k in {r.exit for r in got if r.exit < 2})
    th = sample(engine, "anytime_exit_threshold", exit="0")
    assert th == pytest.approx(plan.thresholds[0] + engine.guard.shift[0], abs=1e-6)


def test_tightened_thresholds_apply_to_budgets_not_to_pinned_thresholds(
    reference_package: ModelPackage,
) -> None:
    m = reference_package.manifest
    guard = GuardConfig(fraction=0.5, floor=0.9, step=0.05, min_samples=1)
    engine = make_engine(reference_package, guard=guard)
    engine.guard.record([(0, False)])
    row, pinned = resolve_plan(m, budget=0.6), resolve_plan(m, threshold=0.5)
    engine.submit(torch.zeros(1, 3, 32, 32), engine.plan(budget=0.6), FAR)
    engine.submit(torch.zeros(1, 3, 32, 32), engine.plan(threshold=0.5), FAR)
    assert engine.queues.pending[0].thresholds[0] == pytest.approx(row.thresholds[0] + 0.05)
    assert engine.queues.pending[0].thresholds[1:] == row.thresholds[1:]
    assert engine.queues.pending[1].thresholds == pinned.thresholds
    default = engine.plan()  # the service's default budget (the package's here), tightened too
    assert default.budget == m.default_budget
    assert default.thresholds[0] == pytest.approx(resolve_plan(m).thresholds[0] + 0.05)


def test_controller_lowers_the_budget_of_unpinned_requests(reference_package: ModelPackage) -> None:
    pkg = reference_package
    ctl = ControllerConfig(p99_target_s=1e-6, interval_s=0.0)  # any latency is over the target
    engine = make_engine(pkg, controller=ctl, default_budget=0.8)
    assert engine.plan().budget == 0.8
    assert sample(engine, "anytime_effective_budget") == 0.8
    plan = resolve_plan(pkg.manifest, budget=1.0)
    engine.start()
    try:
        for _ in range(3):
            engine.submit(torch.randn(2, 3, 32, 32), plan, time.monotonic() + FAR).future.result(
                timeout=30
            )
    finally:
        engine.stop()
    assert engine.plan().budget == 0.6
    assert engine.plan(budget=1.0).budget == 1.0  # a pinned budget is never lowered
    assert sample(engine, "anytime_effective_budget") == 0.6


class _LogitsBackend:
    """Each stage's logits are the carried state itself: ``[n, C]`` chosen by the test."""

    name, device = "fake", "cpu"

    def run_stage(
        self, k: int, state: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return state, state[0]


def _guard_batch(audit: bool) -> StageBatch:
    """Four images, thresholds 0.5 at exits 0-1: image 0 confident and 1 not, both forced out at
    exit 0 by ``max_exit``; image 2 confident, image 3 not, both free to go to exit 2."""
    confident, unsure = [9.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    work = RequestWork(n=4, deadline=time.monotonic() + FAR)
    logits = torch.tensor([confident, unsure, confident, unsure])
    thresholds = (0.5, 0.5, NEVER_EXIT)
    chunks = [
        Pending(work, logits, i, i + 1, thresholds, [0, 0, 2, 2][i], audit=audit) for i in range(4)
    ]
    return StageBatch.from_pending(chunks)


def _answered(out: StageOutcome) -> list[tuple[int, int, bool]]:
    a = out.answered
    return list(zip(a.row.tolist(), [a.exit] * len(a), a.late.tolist(), strict=True))


@pytest.mark.parametrize("audit", [True, False])
def test_the_guard_audits_only_answers_a_budget_threshold_decided(audit: bool) -> None:
    runner = StageRunner(_LogitsBackend())
    # run_to_end: every image reaches the final exit; image 3 is a deadline exit at exit 0.
    rules = StageRules(run_to_end=True, next_cost_s=2 * FAR)
    out = run_stage(runner, 0, _guard_batch(audit), 3, rules)
    assert _answered(out) == [(0, 0, False), (1, 0, False), (2, 0, False), (3, 0, True)]
    assert out.survivors is not None
    out = run_stage(runner, 1, out.survivors, 3, StageRules(run_to_end=True))
    assert out.survivors is not None
    out = run_stage(runner, 2, out.survivors, 3, StageRules(run_to_end=True))
    # Image 1 left because of its max_exit and image 3 because of its deadline: neither says
    # anything about the thresholds. Pinned thresholds (audit False) are the client's.
    assert out.agreements == ([(0, True), (0, True)] if audit else [])
    # Shadows: only the threshold-decided early answers are sampled to run on.
    shadows = StageRules(shadow_fraction=1.0)
    out = run_stage(runner, 0, _guard_batch(audit), 3, shadows)
    assert out.survivors is not None
    assert out.survivors.row.tolist() == ([0, 2, 3] if audit else [3])
