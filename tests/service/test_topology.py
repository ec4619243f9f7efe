"""The shared engine topology's parts in one process: the arena, the simulated device, and a
front end's ``EngineClient`` talking to an ``EngineHost`` over a real socket."""

from __future__ import annotations

import itertools
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Listener
from pathlib import Path

import pytest
import torch

from models.package import ModelPackage
from service.engine import LoadedModel
from service.engine.simulated import SimulatedBackend, SimulatedDevice, busy_seconds
from service.errors import QueueFullError
from service.images import images_to_batch
from service.metrics import ServiceMetrics
from service.repository.startup import build_registry, models_list
from service.topology.arena import Arena, ArenaFullError, ArenaReader
from service.topology.front_end import FrontEnd
from service.topology.host import EngineHost
from tests.service.conftest import make_settings
from tests.service.fixtures import LIMITS, check_answers


def test_arena_hands_images_over_and_refuses_when_full() -> None:
    arena = Arena(cells=4, cell_floats=6)
    try:
        reader = ArenaReader(arena.name, 6)
        a, b = torch.arange(12.0).view(2, 1, 2, 3), torch.full((2, 1, 2, 3), 7.0)
        first_a, first_b = arena.put(a), arena.put(b)
        assert (first_a, first_b) == (0, 2)
        torch.testing.assert_close(reader.get(first_b, 2, (1, 2, 3)), b)
        with pytest.raises(ArenaFullError):
            arena.put(torch.zeros(1, 6))
        with pytest.raises(ArenaFullError):
            arena.put(torch.zeros(5, 6))  # more than the arena holds
        arena.free(first_a, 2)
        assert arena.put(torch.ones(2, 6)) == 0  # the freed run is reused
        torch.testing.assert_close(reader.get(0, 2, (6,)), torch.ones(2, 6))
        reader.close()
    finally:
        arena.close()


def test_simulated_device_answers_with_the_real_model(
    reference_package: ModelPackage, tmp_path: Path
) -> None:
    pkg, images = reference_package, torch.randn(5, 3, 32, 32)
    images[3] = images[1]  # the same image twice in one batch
    backend = SimulatedBackend(pkg.model, SimulatedDevice(tmp_path / "dev"), 0.001, 0.0001)
    with torch.no_grad():
        want = pkg.model(images)
    state: tuple[torch.Tensor, ...] = (images,)
    for k in range(pkg.manifest.num_exits):
        state, logits = backend.run_stage(k, state)
        torch.testing.assert_close(logits, want[k])
        # survivors only, as the engine gathers them: rows travel, answers stay the model's
        state = (state[0][[0, 3, 4]],) if k == 0 else state
        want = [w[[0, 3, 4]] for w in want] if k == 0 else want
    busy = busy_seconds(tmp_path / "dev")
    assert busy == pytest.approx(0.001 * 3 + 0.0001 * (5 + 3 + 3))


def test_simulated_device_runs_one_stage_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans: list[tuple[float, float]] = []
    real_sleep = time.sleep

    def sleep(s: float) -> None:
        t0 = time.monotonic()
        real_sleep(s)
        spans.append((t0, time.monotonic()))

    monkeypatch.setattr("service.engine.simulated.time.sleep", sleep)
    # Separate opens of one file, as separate processes have: only the file lock orders them.
    devices = [SimulatedDevice(tmp_path / "dev") for _ in range(3)]
    threads = [threading.Thread(target=lambda d=d: [d.run(0.003) for _ in range(5)]) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 15
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert busy_seconds(tmp_path / "dev") == pytest.approx(15 * 0.003)


@pytest.fixture
def served(calibrated_package: Path) -> Iterator[tuple[LoadedModel, LoadedModel]]:
    """(the engine process's model, a front end's model of it), joined by a real socket: the
    engine side's registry loads the package; the front end's registry loads clients of it."""
    settings = make_settings(calibrated_package, batching={"max_delay_ms": 5, "queue_size": 64})
    metrics = ServiceMetrics()
    registry = build_registry(settings, metrics, None)
    assert not registry.apply(models_list(settings)).failed
    [engine_side] = registry.ready_versions()
    address = str(Path(tempfile.mkdtemp(prefix="anytime-")) / "engine.sock")
    host = EngineHost(registry, Listener(address, family="AF_UNIX"))
    threading.Thread(target=host.accept_forever, daemon=True).start()
    front = build_registry(settings, metrics, None, loader=FrontEnd(address, settings, metrics).load)
    assert not front.apply(models_list(settings)).failed
    [front_side] = front.ready_versions()
    assert (front_side.name, front_side.version) == (engine_side.name, engine_side.version)
    try:
        yield engine_side.loaded, front_side.loaded
    finally:
        front.close()
        host.close()
        registry.close()


def test_same_answers_as_in_process_for_mixed_budgets_and_arrivals(
    served: tuple[LoadedModel, LoadedModel], images: list[bytes], reference_package: ModelPackage
) -> None:
    engine_side, front = served
    rng = random.Random(0)
    x = images_to_batch(images, reference_package.manifest.preprocessing, LIMITS)
    options = [
        (0.6, None, None),
        (0.8, None, None),
        (1.0, None, None),
        (None, 0.5, None),
        (0.6, None, 1),
    ]
    jobs = []
    for _ in range(40):
        start = rng.randrange(len(images))
        n = rng.randint(1, 4)
        jobs.append((start, min(start + n, len(images)), rng.choice(options)))
    results: dict[int, list] = {}

    def client(ids: list[int]) -> None:
        for i in ids:
            s, e, (budget, threshold, max_exit) = jobs[i]
            plan = front.engine.plan(budget, threshold, max_exit)
            time.sleep(rng.random() * 0.01)  # arrivals spread over several batches
            work = front.engine.submit(x[s:e], plan, time.monotonic() + 30)
            results[i] = [plan, work.future.result(30)]

    threads = [threading.Thread(target=client, args=(list(range(c, 40, 4)),)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (s, e, _) in enumerate(jobs):
        plan, got = results[i]
        check_answers(reference_package, images[s:e], plan, got)
    # Every request was answered exactly once: nothing open, every cell free, and the engine
    # answered as many images as were sent.
    link = front.engine.link  # type: ignore[attr-defined]
    assert link._open == {} and link.arena.in_use() == 0
    answered = sum(c._value.get() for c in engine_side.engine.meters.exit_images)
    assert answered == sum(e - s for s, e, _ in jobs)
    assert front.engine.ready and front.engine.plan() == engine_side.engine.plan()


def test_cancel_and_queue_full_behave_as_in_process(
    served: tuple[LoadedModel, LoadedModel],
    images: list[bytes],
    reference_package: ModelPackage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine_side, front = served
    engine = engine_side.engine
    x = images_to_batch(images[:4], reference_package.manifest.preprocessing, LIMITS)
    plan = front.engine.plan(1.0)
    link = front.engine.link  # type: ignore[attr-defined]
    # Hold the engine's stage runs until the request is cancelled, so that it cannot be
    # answered first: the client left while its images were in the engine.
    gate, step = threading.Event(), engine.runner.step
    monkeypatch.setattr(engine.runner, "step", lambda k, st: (gate.wait(10), step(k, st))[1])
    work = front.engine.submit(x, plan, time.monotonic() + 30)
    front.engine.cancel(work, "disconnected")
    assert work.future.cancelled()
    deadline = time.monotonic() + 10
    while link.arena.in_use() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.arena.in_use() == 0 and link._open == {}
    version = engine_side.package.manifest.version
    counted = engine.metrics.rejections.labels(engine.name, version, "disconnected")._value.get()
    assert counted == 1  # by the engine process, once, as in one process
    gate.set()
    # More images than the engine's queue holds: 429 through the work's future, cells back.
    big = torch.cat([x] * 20)  # 80 images > queue_size 64
    with pytest.raises(QueueFullError):
        front.engine.submit(big, plan, time.monotonic() + 30).future.result(10)
    assert link.arena.in_use() == 0
    # and the front end still serves
    check_answers(
        reference_package,
        images[:4],
        plan,
        front.engine.submit(x, plan, time.monotonic() + 30).future.result(10),
    )


def test_workers_auto_and_topology_auto_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import ServiceSettings
    from service.topology import MAX_AUTO_WORKERS, resolve_topology, resolve_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(20)))
    assert resolve_workers(ServiceSettings(workers="auto")) == MAX_AUTO_WORKERS
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert resolve_workers(ServiceSettings(workers="auto")) == 2
    assert resolve_workers(ServiceSettings(workers=3)) == 3
    assert resolve_topology(ServiceSettings(engine_topology="auto", device="cpu")) == "per-worker"
    sim = {"enabled": True}
    assert resolve_topology(ServiceSettings(engine_topology="auto", simulated_device=sim)) == "shared"
    assert resolve_topology(ServiceSettings(engine_topology="shared")) == "shared"
