"""Disconnects drop queued work; SIGTERM drains in-flight requests, then the process exits 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server, launch, wait_ready
from tests.service.fixtures import NAME

URL = f"/v1/models/{NAME}/classify"


def test_disconnect_drops_work_and_sigterm_drains(
    calibrated_package: Path, images: list[bytes], tmp_path: Path
) -> None:
    # A long batching delay keeps images queued long enough to disconnect or SIGTERM meanwhile.
    server = wait_ready(launch(calibrated_package, tmp_path, "slow", "--batching.max-delay-ms", "800"))
    try:
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=0.2) as c:
            c.post(URL, content=images[0], headers={"content-type": "image/png"})
        time.sleep(1.2)  # past the batching delay: the dropped image would have run by now
        m = server.metrics()
        assert (
            m[
                (
                    "anytime_rejections_total",
                    (("model", NAME), ("reason", "disconnected"), ("version", "1")),
                )
            ]
            == 1
        )
        assert (
            m.get(("anytime_batch_size_count", (("model", NAME), ("stage", "0"), ("version", "1"))), 0.0)
            == 0
        )

        def one(blob: bytes) -> httpx.Response:
            with server.client() as c:
                return c.post(URL, content=blob, headers={"content-type": "image/png"})

        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(one, b) for b in images[:3]]
            # SIGTERM once the server holds all three (queued, waiting for their batch); a fixed
            # sleep raced the requests' arrival on a loaded machine.
            deadline = time.monotonic() + 10
            while classify_in_flight(server) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            responses = [f.result(timeout=30) for f in pending]
        assert [r.status_code for r in responses] == [200, 200, 200]
        # uvicorn shuts down gracefully, then re-raises the signal: exit by SIGTERM, not a crash.
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        assert "draining" in server.logs()
    finally:
        server.stop()


def classify_in_flight(server: Server) -> float:
    """Classify requests the server is handling now (``anytime_requests_in_flight``)."""
    return sum(
        value
        for (name, labels), value in server.metrics().items()
        if name == "anytime_requests_in_flight" and "classify" in dict(labels)["route"]
    )
