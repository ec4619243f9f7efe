"""``--engine-topology shared``: two front ends and one engine process, real HTTP and signals.

Same answers as the in-process engine for mixed budgets, every image answered once (the
engine's counters), and a killed engine process or front end is reported and replaced while
the rest keep serving.
"""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from models.package import ModelPackage
from tests.integration.conftest import Server, launch, wait_ready
from tests.service.fixtures import NAME, load, reference_answers

URL = f"/v1/models/{NAME}/classify"


def _post(server: Server, blob: bytes, budget: float) -> httpx.Response:
    with server.client() as c:  # a connection per request: either front end may accept it
        return c.post(
            URL, params={"budget": budget}, content=blob, headers={"content-type": "image/png"}
        )


def _wait_for(predicate: object, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def shared(calibrated_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    tmp = tmp_path_factory.mktemp("shared")
    args = ("--workers", "2", "--engine-topology", "shared", "--backend", "torch")
    server = wait_ready(launch(calibrated_package, tmp, "shared", *args, TMPDIR=str(tmp)))
    assert _wait_for(lambda: server.logs().count("service: ready: ") == 2), server.logs()
    yield server
    log = Path(server.log.name)
    assert server.stop() == 0, log.read_text()
    logs = log.read_text()
    assert "Traceback" not in logs, logs
    # Only the block of the front end killed below was left to the resource tracker to remove.
    assert sum(map(int, re.findall(r"appear to be (\d+) leaked", logs))) <= 1, logs


def _images_answered(server: Server) -> float:
    return sum(v for (n, _), v in server.metrics().items() if n == "anytime_exit_images_total")


@pytest.mark.slow  # three spawned processes import torch
def test_shared_engine_answers_as_in_process(
    shared: Server, calibrated_package: Path, images: list[bytes]
) -> None:
    pkg: ModelPackage = load(calibrated_package)
    rows = {r.budget: r.thresholds for r in pkg.manifest.budgets}
    before = _images_answered(shared)
    jobs = [(i, budget) for budget in rows for i in range(len(images))]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda j: _post(shared, images[j[0]], j[1]), jobs))
    assert [r.status_code for r in answers] == [200] * len(jobs)
    for (i, budget), r in zip(jobs, answers, strict=True):
        thresholds = list(rows[budget])
        thresholds[-1] = 0.0
        want = reference_answers(pkg, [images[i]], thresholds)[0]
        got = r.json()["predictions"][0]
        assert (got["exit"], got["class_index"]) == (want.exit, want.class_index)
        assert got["confidence"] == pytest.approx(float(want.probs.max()), abs=1e-4)
    # No image lost or answered twice: the engine process answered exactly these.
    assert _images_answered(shared) - before == len(jobs)


def _pid(logs: str, pattern: str) -> int:
    return int(re.findall(pattern, logs)[-1])


@pytest.mark.slow
def test_a_killed_engine_process_is_replaced_and_front_ends_recover(
    shared: Server, images: list[bytes]
) -> None:
    old = _pid(shared.logs(), r"engine process (\d+) started")
    os.kill(old, signal.SIGKILL)
    assert _wait_for(lambda: f"engine process {old} exited with -9" in shared.logs(), 30)
    # Meanwhile requests are refused with 503 (not hung), then served by the new engine.
    assert _post(shared, images[0], 0.6).status_code in (200, 503)
    assert _wait_for(lambda: shared.logs().count("reconnected to the engine process") >= 2)
    assert all(_post(shared, b, 0.8).status_code == 200 for b in images[:8])


@pytest.mark.slow
def test_a_killed_front_end_is_replaced_while_the_other_serves(
    shared: Server, images: list[bytes]
) -> None:
    front_ends = re.findall(r"Started server process \[(\d+)\]", shared.logs())
    victim = int(front_ends[-1])
    os.kill(victim, signal.SIGKILL)
    # The other front end answers throughout.
    assert all(_post(shared, b, 0.6).status_code == 200 for b in images[:12])
    assert _wait_for(lambda: shared.logs().count("Started server process") > len(front_ends))
    assert _wait_for(lambda: shared.logs().count("service: ready: ") >= 3)
    assert all(_post(shared, b, 1.0).status_code == 200 for b in images[:12])
