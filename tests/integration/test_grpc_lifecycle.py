"""gRPC over a server's life: the client's deadline drops the request's queued work, SIGTERM
answers the RPCs in flight, several worker processes share the gRPC port, and the front ends
of the shared engine process serve it too."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, launch, wait_ready
from tests.integration.test_workers import answered_by_process, wait_for_ready_workers
from tests.service.fixtures import NAME

INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer(server: Server, blob: bytes, **kwargs: object) -> triton.InferResult:
    """One image on its own connection (with several workers, any may accept it): gRPC shares
    one connection among a process's channels to an address, unless each has its own pool."""
    assert server.grpc is not None
    own = [("grpc.use_local_subchannel_pool", 1)]
    with triton.InferenceServerClient(server.grpc, channel_args=own) as c:
        inp = triton.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([blob], dtype=np.object_))
        return c.infer(NAME, [inp], **kwargs)  # type: ignore[arg-type]


def total(server: Server, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (any version's)."""
    return sum(
        value
        for (sample, have), value in server.metrics().items()
        if sample == name and labels.items() <= dict(have).items()
    )


def in_flight(server: Server) -> float:
    return server.metrics().get(("anytime_requests_in_flight", (("route", INFER),)), 0.0)


def test_a_grpc_deadline_drops_queued_work_and_sigterm_answers_rpcs_in_flight(
    calibrated_package: Path, images: list[bytes], tmp_path: Path
) -> None:
    # A long batching delay keeps images queued past the client's deadline, or SIGTERM meanwhile.
    server = wait_ready(launch(calibrated_package, tmp_path, "slow", "--batching.max-delay-ms", "800"))
    try:
        with pytest.raises(InferenceServerException) as e:
            infer(server, images[0], client_timeout=0.3)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        time.sleep(1.2)  # past the batching delay: the dropped image would have run by now
        # Whichever came first, the server's deadline (the client's) or the client's leaving.
        dropped = [
            total(server, "anytime_rejections_total", model=NAME, reason=r)
            for r in ("deadline", "disconnected")
        ]
        assert sum(dropped) == 1, dropped
        assert total(server, "anytime_batch_size_count", model=NAME, stage="0") == 0

        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(infer, server, b) for b in images[:3]]
            deadline = time.monotonic() + 10
            while in_flight(server) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=30) for f in pending]
        assert all(a.as_numpy("exit") is not None for a in answers)
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        server.stop()


@pytest.mark.slow  # two spawned workers import torch and warm up
def test_two_workers_share_the_grpc_port(
    calibrated_package: Path, images: list[bytes], tmp_path: Path
) -> None:
    tmp = tmp_path / "tmp"  # the parent's metrics directory: per-process counters to read
    tmp.mkdir()
    proc = launch(calibrated_package, tmp_path, "workers", "--workers", "2", TMPDIR=str(tmp))
    server = wait_ready(proc)
    try:
        wait_for_ready_workers(server, 2)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda b: infer(server, b), images[:24]))
        assert len(answers) == 24
        per_worker = answered_by_process(tmp)
        assert sum(per_worker.values()) == 24 and len(per_worker) == 2, per_worker
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    finally:
        server.stop()


@pytest.mark.slow  # an engine process and two front ends start
def test_front_ends_of_the_shared_engine_serve_grpc(
    calibrated_package: Path, images: list[bytes], tmp_path: Path
) -> None:
    args = ("--engine-topology", "shared", "--workers", "2")
    server = wait_ready(launch(calibrated_package, tmp_path, "shared", *args))
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda b: infer(server, b), images[:8]))
        assert [a.get_response().model_name for a in answers] == [NAME] * 8
    finally:
        server.stop()
