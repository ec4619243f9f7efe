"""``--workers 2``: two processes share the socket; a scrape of either counts both; SIGTERM drains."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.integration.conftest import Server, launch, wait_ready
from tests.service.fixtures import NAME

URL = f"/v1/models/{NAME}/classify"


@pytest.mark.slow  # two spawned workers import torch and warm up
def test_two_workers_answer_and_every_scrape_counts_both(
    calibrated_package: Path, images: list[bytes], tmp_path: Path
) -> None:
    # The parent makes its metrics directory under TMPDIR: here, where the test can read it.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = ("--workers", "2", "--backend", "torch", "--pin-workers")
    server = wait_ready(launch(calibrated_package, tmp_path, "workers", *args, TMPDIR=str(tmp)))
    try:
        # A worker accepts connections only once its model is warm: wait for both.
        deadline = time.monotonic() + 120
        while server.logs().count("ready: ") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.logs().count("ready: ") == 2, server.logs()

        def one(blob: bytes) -> httpx.Response:
            with server.client() as c:  # a connection per request: either worker may accept it
                return c.post(URL, content=blob, headers={"content-type": "image/png"})

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(one, images[:24]))
        assert [r.status_code for r in responses] == [200] * 24

        # Each scrape lands on either worker and must report both workers' answers.
        for _ in range(8):
            assert answered(server) == 24
        per_worker = answered_by_process(tmp)
        assert sum(per_worker.values()) == 24
        assert len(per_worker) == 2, per_worker
        # --pin-workers: each worker's threads on its own share of the cores.
        if len(os.sched_getaffinity(0)) >= 2:
            first, second = (thread_cores(pid) for pid in per_worker)
            assert first and second and not first & second, (first, second)

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        assert "draining" in server.logs()
        assert list(tmp.iterdir()) == [], "the metrics directory outlives the server"
    finally:
        server.stop()


def thread_cores(pid: int) -> set[int]:
    """The cores any thread of process ``pid`` may run on."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return set().union(*(os.sched_getaffinity(int(t.name)) for t in tasks))


def answered(server: Server) -> float:
    """Images answered at any exit, from one scrape of /metrics."""
    return sum(
        value
        for (name, labels), value in server.metrics().items()
        if name == "anytime_exit_images_total" and dict(labels)["model"] == NAME
    )


def answered_by_process(tmp: Path) -> dict[int, float]:
    """Worker pid -> images it answered, from prometheus_client's per-process counter files."""
    out: dict[int, float] = {}
    for path in tmp.glob("*/counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            metric, _, labels, _ = json.loads(key)
            if metric == "anytime_exit_images" and labels["model"] == NAME and value:
                out[pid] = out.get(pid, 0.0) + value
    return out


@pytest.mark.slow  # spawned workers import torch before they fail
def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    broken = tmp_path / "broken-package"
    broken.mkdir()  # exists, so the parent starts the workers; no manifest, so they fail
    proc = launch(broken, tmp_path, "broken", "--workers", "2")
    try:
        assert proc.wait(120) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.log.close()  # type: ignore[attr-defined]
    log = (tmp_path / "broken.log").read_text()
    assert "cannot serve model package" in log
