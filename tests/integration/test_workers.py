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


# Traffic both servers get: (query options, images per request), 18 requests of 1-4 images.
TRAFFIC = [({"budget": b}, n) for b in (0.6, 0.8, 1.0) for n in (1, 3)] * 2 + [
    ({}, 2),  # the default budget
    ({"threshold": 0.5}, 4),
    ({"max_exit": 0}, 1),
    ({"budget": 0.6, "max_exit": 1}, 2),
    ({"budget": 0.1}, 1),  # below the budget table: 422
    ({"top_k": 0}, 1),  # out of range: 422
]
# Durations: only how many were observed is the same for the same traffic.
TIMED = ("anytime_request_duration_seconds", "anytime_queue_wait_seconds")
# Measured at start-up (each process times its own stages): only which series exist.
MEASURED = ("anytime_budget_expected_latency_seconds", "anytime_budget_expected_images_per_second")


def comparable(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict:
    """The samples that the same traffic must give the same values on any number of workers:
    the API's routes only (health polls and scrapes differ), no ``_created`` timestamps."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float | None] = {}
    for (name, labels), value in samples.items():
        route = dict(labels).get("route")
        if name.endswith("_created") or (route is not None and not route.startswith("/v")):
            continue
        if name.startswith(TIMED) and not name.endswith("_count"):
            continue
        out[(name, labels)] = None if name in MEASURED else value
    return out


def differences(got: dict, want: dict) -> list[str]:
    """Each sample whose value (or presence) differs, as ``name{labels}: got X, want Y``."""
    out = []
    for key in sorted(got.keys() | want.keys()):
        a, b = got.get(key, "absent"), want.get(key, "absent")
        same = a == b if not isinstance(a, float) or not isinstance(b, float) else a == pytest.approx(b)
        if not same:
            name, labels = key
            out.append(f"{name}{dict(labels)}: got {a}, want {b}")
    return out


def send(server: Server, images: list[bytes]) -> list[int]:
    """``TRAFFIC``, 4 requests at a time, each on its own connection (any worker may take it)."""

    def one(i: int) -> int:
        options, n = TRAFFIC[i]
        files = [("files", (f"{j}.png", images[(i + j) % len(images)], "image/png")) for j in range(n)]
        with server.client() as c:
            return c.post(URL, params=options, files=files).status_code

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(len(TRAFFIC))))


def start(package: Path, tmp_path: Path, name: str, *args: str) -> Server:
    """A server whose ``auto`` measurements disagree between processes (``noisy_auto``); one
    request per batch, so that which requests share a batch cannot differ between servers."""
    (tmp_path / name).mkdir()
    proc = launch(
        package,
        tmp_path,
        name,
        "--backend", "auto", "--no-batching.enabled", *args,
        module="tests.integration.noisy_auto",
        NOISY_AUTO_ORDER=str(tmp_path / name / "order"),
        TMPDIR=str(tmp_path / name),
    )  # fmt: skip
    return wait_ready(proc)


def wait_for_ready_workers(server: Server, n: int) -> None:
    deadline = time.monotonic() + 180
    while server.logs().count("ready: ") < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.logs().count("ready: ") == n, server.logs()


@pytest.mark.slow  # three servers start and warm up, and a worker is replaced
def test_two_workers_report_what_one_process_does(
    calibrated_package: Path, images: list[bytes], tmp_path: Path
) -> None:
    statuses = [422 if "top_k" in o or o.get("budget") == 0.1 else 200 for o, _ in TRAFFIC]
    one = start(calibrated_package, tmp_path, "one")
    try:
        assert send(one, images) == statuses
        want = comparable(one.metrics())
    finally:
        one.stop()
    answered = sum(n for (_, n), status in zip(TRAFFIC, statuses, strict=True) if status == 200)
    assert sum(v for (n, _), v in want.items() if n == "anytime_exit_images_total") == answered

    two = start(calibrated_package, tmp_path, "two", "--workers", "2")
    try:
        wait_for_ready_workers(two, 2)
        assert send(two, images) == statuses
        per_worker = answered_by_process(tmp_path / "two")
        assert len(per_worker) == 2, f"one worker took all the traffic: {per_worker}"
        for _ in range(4):  # any worker answers the scrape with the totals of both
            assert differences(comparable(two.metrics()), want) == []

        # A worker dies: its counts stay in the totals, its gauges go, its replacement's come.
        victim = next(iter(per_worker))
        os.kill(victim, signal.SIGKILL)
        wait_for_ready_workers(two, 3)
        for _ in range(4):
            assert differences(comparable(two.metrics()), want) == []
    finally:
        two.stop()


@pytest.mark.slow  # two spawned workers import torch and warm up
def test_workers_stop_when_the_parent_is_killed(calibrated_package: Path, tmp_path: Path) -> None:
    """SIGKILL to the parent (nothing of it runs): its workers get SIGTERM from the kernel and
    stop, instead of serving on, unsupervised, on the shared socket."""
    server = wait_ready(launch(calibrated_package, tmp_path, "orphans", "--workers", "2"))
    deadline = time.monotonic() + 120
    while server.logs().count("ready: ") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    with server.client() as c:
        assert c.get("/readyz").status_code == 200
    server.proc.kill()
    server.proc.wait(10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{server.url}/readyz", timeout=2)
        except httpx.TransportError:
            break  # nobody listens any more
        time.sleep(0.5)
    else:
        pytest.fail(f"workers still answer 60 s after their parent was killed\n{server.logs()}")
