"""A model repository served by real worker processes: Triton's HTTP client, and reload under load.

The server runs two worker processes in explicit control mode; a load answers only once both
serve the change, so that every request sent after it reaches the new version.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, launch, wait_ready
from tests.service.fixtures import NAME
from tests.service.v2_client import bytes_request


def add_version(root: Path, package: Path, version: int) -> None:
    shutil.copytree(package, root / NAME / str(version))


@pytest.fixture
def repo_server(tmp_path: Path, calibrated_package: Path) -> Iterator[tuple[Server, Path]]:
    root = tmp_path / "repo"
    add_version(root, calibrated_package, 1)
    proc = launch(
        calibrated_package,
        tmp_path,
        "repo",
        "--model-repository", str(root),
        "--model-control-mode", "explicit",
        "--workers", "2",
        "--backend", "torch",
        ANYTIME_MODELS="[]",
    )  # fmt: skip
    server = wait_ready(proc)
    try:
        yield server, root
    finally:
        assert server.stop() == 0, server.logs()


def image_input(images: list[bytes]) -> triton.InferInput:
    inp = triton.InferInput("image", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    return inp


def test_triton_http_client_drives_the_repository(
    repo_server: tuple[Server, Path], calibrated_package: Path, images: list[bytes]
) -> None:
    server, root = repo_server
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert "model_repository" in client.get_server_metadata()["extensions"]
    assert client.get_model_repository_index() == [
        {"name": NAME, "version": "1", "state": "READY", "reason": ""}
    ]
    add_version(root, calibrated_package, 2)
    client.load_model(NAME)  # latest 1: version 2 in, version 1 drained out, in both workers
    assert client.get_model_repository_index() == [
        {"name": NAME, "version": "2", "state": "READY", "reason": ""}
    ]
    assert client.is_model_ready(NAME, "2") and not client.is_model_ready(NAME, "1")
    assert client.get_model_metadata(NAME, "2")["versions"] == ["2"]
    for _ in range(8):  # whichever worker answers, it serves version 2
        result = client.infer(NAME, [image_input(images[:2])], parameters={"budget": 0.6})
        assert result.get_response()["model_version"] == "2"
    client.load_model(NAME, config='{"version_policy": {"specific": {"versions": [1, 2]}}}')
    pinned = client.infer(NAME, [image_input(images[:1])], model_version="1")
    assert pinned.get_response()["model_version"] == "1" and pinned.as_numpy("exit").shape == (1,)
    client.unload_model(NAME)
    assert client.get_model_repository_index() == []
    with pytest.raises(InferenceServerException) as e:
        client.infer(NAME, [image_input(images[:1])])
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException) as e:
        client.load_model("nope")
    assert e.value.status() == "404" and "'nope'" in str(e.value.message())


@dataclass
class Answer:
    sent: float
    done: float
    status: int
    version: str


async def _hammer(url: str, body: bytes, headers: dict[str, str], stop: asyncio.Event) -> list[Answer]:
    """One client sending requests back to back until ``stop``, over one keep-alive connection.

    The connection is not reused once idle for 1 s (the server closes idle ones after 5 s): on a
    starved machine a reuse would race the server's close, a failure of the client's."""
    out = []
    limits = httpx.Limits(max_connections=1, keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = await c.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
                version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                out.append(Answer(sent, time.monotonic(), r.status_code, version))
            except httpx.HTTPError as e:
                out.append(Answer(sent, time.monotonic(), 0, repr(e)))
    return out


@pytest.mark.slow
def test_reload_under_load_fails_no_request(
    repo_server: tuple[Server, Path], calibrated_package: Path, images: list[bytes]
) -> None:
    server, root = repo_server
    body, headers = bytes_request(images[:1], binary=True)
    reloads: list[tuple[float, float, int]] = []  # (load sent, load answered, new version)

    async def run() -> list[list[Answer]]:
        stop = asyncio.Event()
        clients = [asyncio.create_task(_hammer(server.url, body, headers, stop)) for _ in range(64)]
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as control:
            await asyncio.sleep(1.0)
            for version in range(2, 12):  # ten times: load a new version, unload the old
                await asyncio.to_thread(add_version, root, calibrated_package, version)
                sent = time.monotonic()
                r = await control.post(f"/v2/repository/models/{NAME}/load")
                assert r.status_code == 200, r.text
                reloads.append((sent, time.monotonic(), version))
                await asyncio.sleep(0.5)
        stop.set()
        return await asyncio.gather(*clients)

    per_connection = asyncio.run(run())
    answers = [a for conn in per_connection for a in conn]
    failed = [a for a in answers if a.status != 200]
    assert not failed, failed[:5]
    assert {a.version for a in answers} == {str(v) for v in range(1, 12)}
    for sent, answered, version in reloads:
        # Sent after the load answered: the new version, in every worker.
        assert all(int(a.version) >= version for a in answers if a.sent > answered)
        # Answered before the load was sent: an older one.
        assert all(int(a.version) < version for a in answers if a.done < sent)
    mixed = sum(1 for a in answers if any(s < a.done and a.sent < e for s, e, _ in reloads))
    print(
        f"{len(answers)} requests over 64 connections, 10 reloads, 0 failed; {mixed} overlapped a load"
    )
