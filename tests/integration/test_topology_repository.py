"""``--engine-topology shared`` in explicit control mode: load and unload requests answered by a
front end take effect in the engine process, over HTTP and gRPC, with per-worker mode's contract
(the request answers once the version serves everywhere; a failed load is reported, counted once,
and the serving version stays)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server, launch, wait_ready
from tests.service.fixtures import NAME
from tests.service.v2_client import bytes_request

PINNED = {"specific": {"versions": [2]}}


def _config(policy: dict[str, object]) -> dict[str, object]:
    return {"parameters": {"config": json.dumps({"version_policy": policy})}}


@pytest.fixture
def shared_repo(tmp_path: Path, calibrated_package: Path) -> Iterator[tuple[Server, Path]]:
    root = tmp_path / "repo"
    shutil.copytree(calibrated_package, root / NAME / "1")
    (root / NAME / "config.yaml").write_text("version_policy: {all: {}}\n")
    proc = launch(
        calibrated_package,
        tmp_path,
        "shared-repo",
        "--workers", "2",
        "--engine-topology", "shared",
        "--backend", "torch",
        "--model-repository", str(root),
        "--model-control-mode", "explicit",
        ANYTIME_MODELS="[]",
        TMPDIR=str(tmp_path),
    )  # fmt: skip
    server = wait_ready(proc)
    try:
        yield server, root
    finally:
        log = Path(server.log.name)
        assert server.stop() == 0, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()


def _index(server: Server) -> dict[str, tuple[str, str]]:
    with server.client() as c:
        r = c.post("/v2/repository/index")
    assert r.status_code == 200, r.text
    return {e["version"]: (e["state"], e["reason"]) for e in r.json() if e["name"] == NAME}


def _answers(server: Server, image: bytes, path: str = f"/v2/models/{NAME}", n: int = 8) -> set[str]:
    """What ``n`` requests, each on a connection of its own (either front end may take it), got:
    the answering version, or the status and error."""
    body, headers = bytes_request([image], binary=False)
    out = set()
    for _ in range(n):
        with server.client() as c:
            r = c.post(f"{path}/infer", content=body, headers=headers)
        out.add(r.json()["model_version"] if r.status_code == 200 else f"{r.status_code}")
    return out


@pytest.mark.slow  # four processes import torch
def test_explicit_loads_and_unloads_reach_the_engine_process(
    shared_repo: tuple[Server, Path], calibrated_package: Path, images: list[bytes]
) -> None:
    server, root = shared_repo
    assert _index(server) == {"1": ("READY", "")}
    # Load version 2 beside 1 (the policy: every version).
    shutil.copytree(calibrated_package, root / NAME / "2")
    with server.client() as c:
        assert c.post(f"/v2/repository/models/{NAME}/load").status_code == 200
    assert _index(server) == {"1": ("READY", ""), "2": ("READY", "")}
    assert _answers(server, images[0]) == {"2"}
    assert _answers(server, images[0], f"/v2/models/{NAME}/versions/2") == {"2"}
    assert _answers(server, images[0], f"/v2/models/{NAME}/versions/1") == {"1"}
    # Unload version 1: only version 2 stays, in the engine process and both front ends.
    with server.client() as c:
        assert c.post(f"/v2/repository/models/{NAME}/load", json=_config(PINNED)).status_code == 200
    assert _index(server) == {"2": ("READY", "")}
    assert _answers(server, images[0], f"/v2/models/{NAME}/versions/1") == {"404"}
    # A broken version 3: the load fails with the engine process's reason, version 2 serves.
    v3 = shutil.copytree(calibrated_package, root / NAME / "3")
    stage = next((v3 / "onnx").iterdir())
    stage.write_bytes(stage.read_bytes()[:100])
    with server.client() as c:
        r = c.post(f"/v2/repository/models/{NAME}/load", json=_config({"all": {}}))
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"failed to load model {NAME!r}: version 3: ")
    assert "checksum mismatch for onnx/" in r.json()["error"]
    state, reason = _index(server)["3"]
    assert state == "UNAVAILABLE" and "checksum mismatch for onnx/" in reason
    assert _index(server)["2"] == ("READY", "")
    assert _answers(server, images[0]) == {"2"}
    failures = {
        labels: v
        for (name, labels), v in server.metrics().items()
        if name == "anytime_model_load_failures_total"
    }
    # Loaded (and failed) once, in the engine process; the front ends only mirror it.
    assert failures == {(("model", NAME), ("version", "3")): 1.0}
    logged = re.findall(rf"model {NAME} version 3 failed to load", server.logs())
    assert len(logged) == 1


@pytest.mark.slow
def test_grpc_unload_and_load_reach_the_engine_process(
    shared_repo: tuple[Server, Path], images: list[bytes]
) -> None:
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    server, _ = shared_repo
    inp = triton.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array(images[:1], dtype=np.object_))
    assert server.grpc is not None
    with triton.InferenceServerClient(server.grpc) as client:
        client.unload_model(NAME)  # every version: the front ends' links to the engine close
        assert _index(server) == {}
        with pytest.raises(InferenceServerException) as e:
            client.infer(NAME, [inp])
        assert e.value.status() == "StatusCode.NOT_FOUND"
        assert _answers(server, images[0]) == {"404"}
        client.load_model(NAME)  # and open again
        assert _index(server) == {"1": ("READY", "")}
        assert client.infer(NAME, [inp]).get_response().model_version == "1"
    assert _answers(server, images[0]) == {"1"}
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/readyz").status_code == 200
