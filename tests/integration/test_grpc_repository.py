"""The model repository over gRPC with Triton's client: index, load, unload and versioned infer
against a real server in explicit control mode (service/repository/control.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, launch, wait_ready
from tests.service.fixtures import NAME


@pytest.fixture(scope="module")
def server(calibrated_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("repo")
    for version in (1, 2):
        shutil.copytree(calibrated_package, root / NAME / str(version))
    (root / NAME / "config.yaml").write_text("version_policy: {all: {}}\n")
    logs = tmp_path_factory.mktemp("repo-logs")
    args = ("--backend", "torch", "--model-repository", str(root), "--model-control-mode", "explicit")
    s = wait_ready(launch(calibrated_package, logs, "repository", *args, ANYTIME_MODELS="[]"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    assert server.grpc is not None
    with triton.InferenceServerClient(server.grpc) as c:
        yield c


def index(client: triton.InferenceServerClient) -> dict[str, str]:
    """Version -> state of the test model."""
    return {m.version: m.state for m in client.get_model_repository_index().models if m.name == NAME}


def answered_by(client: triton.InferenceServerClient, image: bytes, version: str = "") -> str:
    inp = triton.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=np.object_))
    result = client.infer(
        NAME, [inp], model_version=version, outputs=[triton.InferRequestedOutput("exit")]
    )
    return result.get_response().model_version


def test_versioned_infer_and_metadata(client: triton.InferenceServerClient, images: list[bytes]) -> None:
    assert index(client) == {"1": "READY", "2": "READY"}
    assert [answered_by(client, images[0], v) for v in ("1", "2", "")] == ["1", "2", "2"]
    assert client.is_model_ready(NAME, "1") and client.is_model_ready(NAME, "2")
    assert list(client.get_model_metadata(NAME, "1").versions) == ["1", "2"]
    for version in ("3", "latest"):
        with pytest.raises(InferenceServerException) as e:
            answered_by(client, images[0], version)
        assert e.value.status() == "StatusCode.NOT_FOUND", e.value.message()


def test_unload_then_load_and_a_pinned_version(
    client: triton.InferenceServerClient, images: list[bytes]
) -> None:
    client.unload_model(NAME)
    assert index(client) == {}
    with pytest.raises(InferenceServerException) as e:
        answered_by(client, images[0])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    client.load_model(NAME)
    assert index(client) == {"1": "READY", "2": "READY"}
    client.load_model(NAME)  # idempotent
    # Triton's JSON model config pins version 1: version 2 drains and goes.
    client.load_model(NAME, config=json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
    assert index(client) == {"1": "READY"}
    assert answered_by(client, images[0]) == "1"
    client.load_model(NAME)  # the repository's own policy again: every version
    assert index(client) == {"1": "READY", "2": "READY"}


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (lambda c: c.load_model("nope"), "NOT_FOUND", "model 'nope' cannot be loaded"),
        (lambda c: c.unload_model("nope"), "NOT_FOUND", "model 'nope' is not loaded"),
        (lambda c: c.load_model(NAME, config="{not json"), "INVALID_ARGUMENT", "not JSON"),
    ],
)
def test_repository_errors(
    client: triton.InferenceServerClient,
    call: Callable[[triton.InferenceServerClient], object],
    code: str,
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as e:
        call(client)
    assert e.value.status() == f"StatusCode.{code}" and message in e.value.message(), e.value.message()


def test_load_and_unload_need_explicit_mode(servers: dict[str, Server]) -> None:
    assert servers["torch"].grpc is not None
    with triton.InferenceServerClient(servers["torch"].grpc) as c:
        assert [(m.name, m.version, m.state) for m in c.get_model_repository_index().models] == [
            (NAME, "1", "READY")
        ]
        with pytest.raises(InferenceServerException) as e:
            c.unload_model(NAME)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "--model-control-mode explicit" in e.value.message()
