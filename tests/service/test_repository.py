"""The model repository through the app: layout, version policy, control modes, faults."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.app import create_app
from service.repository.scan import scan_repository
from service.settings import ServiceSettings
from tests.service.fixtures import NAME, rewrite_weights
from tests.service.v2_client import bytes_request

PNG = {"content-type": "image/png"}


def repo_settings(root: Path, mode: str = "explicit", **overrides: object) -> ServiceSettings:
    base: dict[str, object] = dict(
        model_repository=root,
        model_control_mode=mode,
        backend="torch",
        device="cpu",
        intra_op_threads=0,
        warmup=False,
    )
    return ServiceSettings(**{**base, **overrides})  # type: ignore[arg-type]


def add_version(root: Path, package: Path, version: int | str, name: str = NAME) -> Path:
    dst = root / name / str(version)
    shutil.copytree(package, dst)
    return dst


def index(c: TestClient) -> list[dict]:
    r = c.post("/v2/repository/index")
    assert r.status_code == 200, r.text
    return r.json()


def states(c: TestClient) -> dict[str | None, str]:
    return {e.get("version"): e["state"] for e in index(c) if e["name"] == NAME}


def infer(c: TestClient, image: bytes, path: str = f"/v2/models/{NAME}") -> Response:
    body, headers = bytes_request([image], binary=False)
    return c.post(f"{path}/infer", content=body, headers=headers)


def infer_version(c: TestClient, image: bytes, path: str = f"/v2/models/{NAME}") -> str:
    r = infer(c, image, path)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


@pytest.fixture
def repo(tmp_path: Path, calibrated_package: Path) -> Path:
    root = tmp_path / "repo"
    add_version(root, calibrated_package, 1)
    return root


@pytest.fixture
def client(repo: Path) -> Iterator[TestClient]:
    with TestClient(create_app(repo_settings(repo))) as c:
        yield c


def test_the_scan_reads_versions_policies_and_reports_bad_entries(tmp_path: Path) -> None:
    for entry in ("a/1", "a/2", "a/3", "a/latest", "b/1", "b/2", "c/1"):
        (tmp_path / entry).mkdir(parents=True)
    (tmp_path / "b" / "config.yaml").write_text("version_policy: {all: {}}\n")
    (tmp_path / "c" / "config.yaml").write_text("version_policy: {latest: {num_versions: 0}}\n")
    scan = scan_repository(tmp_path)
    assert scan.desired() == {
        "a": {3: str(tmp_path / "a" / "3")},  # Triton's default: the latest one
        "b": {1: str(tmp_path / "b" / "1"), 2: str(tmp_path / "b" / "2")},
        "c": {1: str(tmp_path / "c" / "1")},  # its config is reported, the default applies
    }
    errors = scan.errors()
    assert "a/latest: not a version (versions are positive integers" in errors["a"]
    assert (
        "version_policy.latest.num_versions: Input should be greater than or equal to 1" in errors["c"]
    )
    gone = scan_repository(tmp_path / "missing")
    assert gone.error.startswith(f"model repository {tmp_path / 'missing'} is unreadable")


def test_load_a_new_version_serves_it_and_unloads_the_old(
    client: TestClient, repo: Path, calibrated_package: Path, images: list[bytes]
) -> None:
    assert states(client) == {"1": "READY"}
    assert infer_version(client, images[0]) == "1"
    add_version(repo, calibrated_package, 2)
    assert client.post(f"/v2/repository/models/{NAME}/load").status_code == 200
    assert states(client) == {"2": "READY"}  # latest 1: version 1 drained and unloaded
    assert infer_version(client, images[0]) == "2"
    assert infer_version(client, images[0], f"/v2/models/{NAME}/versions/2") == "2"
    gone = infer(client, images[0], f"/v2/models/{NAME}/versions/1")
    assert gone.status_code == 404 and "no version 1; versions: [2]" in gone.json()["error"]
    r = client.post(f"/v1/models/{NAME}/classify", content=images[0], headers=PNG)
    assert r.status_code == 200 and r.json()["version"] == "2"
    assert client.get(f"/v2/models/{NAME}").json()["versions"] == ["2"]
    # Loading what is served is a no-op; Triton's config parameter pins versions.
    assert client.post(f"/v2/repository/models/{NAME}/load").status_code == 200
    config = json.dumps({"version_policy": {"specific": {"versions": [1, 2]}}})
    r = client.post(f"/v2/repository/models/{NAME}/load", json={"parameters": {"config": config}})
    assert r.status_code == 200 and states(client) == {"1": "READY", "2": "READY"}
    r = client.post(f"/v1/models/{NAME}/classify?version=1", content=images[0], headers=PNG)
    assert r.status_code == 200 and r.json()["version"] == "1"
    assert client.get(f"/v1/models/{NAME}?version=2").json()["version"] == "2"
    assert client.get(f"/v2/models/{NAME}/versions/1/ready").json() == {"name": NAME, "ready": True}
    assert client.post(f"/v2/repository/models/{NAME}/unload").status_code == 200
    assert index(client) == [] and client.get(f"/v2/models/{NAME}/ready").status_code == 404


@pytest.mark.parametrize("fault", ["corrupt_onnx", "missing_onnx", "bad_manifest"])
def test_a_broken_version_is_reported_and_the_serving_one_stays(
    client: TestClient, repo: Path, calibrated_package: Path, images: list[bytes], fault: str
) -> None:
    v2 = add_version(repo, calibrated_package, 2)
    stage = next((v2 / "onnx").iterdir())
    if fault == "corrupt_onnx":
        stage.write_bytes(stage.read_bytes()[:100])
    elif fault == "missing_onnx":
        stage.unlink()
    else:
        (v2 / "manifest.json").write_text("{not json")
    r = client.post(f"/v2/repository/models/{NAME}/load")
    assert r.status_code == 400
    expected = {
        "corrupt_onnx": "checksum mismatch for onnx/",
        "missing_onnx": "missing file onnx/",
        "bad_manifest": "manifest.json: not valid JSON",
    }[fault]
    assert r.json()["error"].startswith(f"failed to load model {NAME!r}: version 2: ")
    assert expected in r.json()["error"]
    entries = {e["version"]: e for e in index(client)}
    assert entries["1"]["state"] == "READY" and entries["2"]["state"] == "UNAVAILABLE"
    assert expected in entries["2"]["reason"]
    assert infer_version(client, images[0]) == "1"  # still answering, nothing 5xx
    metrics = client.get("/metrics").text
    assert f'anytime_model_load_failures_total{{model="{NAME}",version="2"}} 1.0' in metrics


def test_bad_directories_unknown_models_and_the_control_mode(
    client: TestClient, repo: Path, images: list[bytes]
) -> None:
    (repo / NAME / "v2").mkdir()
    r = client.post(f"/v2/repository/models/{NAME}/load")
    assert r.status_code == 200  # version 1 still loads; the stray directory is reported
    bad = [e for e in index(client) if "version" not in e]
    assert bad[0]["state"] == "UNAVAILABLE" and "v2: not a version" in bad[0]["reason"]
    for route in ("load", "unload"):
        r = client.post(f"/v2/repository/models/nope/{route}")
        assert r.status_code == 404 and "'nope'" in r.json()["error"]
    r = infer(client, images[0], f"/v2/models/{NAME}/versions/x")
    assert r.status_code == 404 and "versions are positive integers" in r.json()["error"]
    assert client.post("/v2/repository/index", json={"ready": True}).json() == [
        {"name": NAME, "version": "1", "state": "READY", "reason": ""}
    ]
    with TestClient(create_app(repo_settings(repo, mode="none"))) as fixed:
        r = fixed.post(f"/v2/repository/models/{NAME}/unload")
        assert r.status_code == 400 and "--model-control-mode explicit" in r.json()["error"]


def test_poll_mode_follows_the_directory_and_survives_its_loss(
    repo: Path, calibrated_package: Path, images: list[bytes]
) -> None:
    settings = repo_settings(repo, mode="poll", repository_poll_secs=0.2)

    def wait_for(c: TestClient, want: dict[str | None, str]) -> None:
        deadline = time.monotonic() + 60
        while states(c) != want:
            assert time.monotonic() < deadline, states(c)
            time.sleep(0.1)

    with TestClient(create_app(settings)) as c:
        add_version(repo, calibrated_package, 2)
        wait_for(c, {"2": "READY"})
        assert infer_version(c, images[0]) == "2"
        moved = repo.with_name("moved")
        repo.rename(moved)  # the volume goes away
        deadline = time.monotonic() + 30
        while not index(c)[0]["reason"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        entry = index(c)[0]
        assert entry["state"] == "READY" and "is unreadable" in entry["reason"]
        assert infer_version(c, images[0]) == "2"
        moved.rename(repo)
        shutil.rmtree(repo / NAME / "2")  # the rollback: back to version 1
        wait_for(c, {"1": "READY"})
        assert infer_version(c, images[0]) == "1"


def class_indices(c: TestClient, images: list[bytes]) -> list[int]:
    r = infer_many(c, images)
    assert r.status_code == 200, r.text
    return next(o["data"] for o in r.json()["outputs"] if o["name"] == "class_index")


def infer_many(c: TestClient, images: list[bytes]) -> Response:
    body, headers = bytes_request(images, binary=False, budget=1.0)
    return c.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_poll_reloads_a_package_rewritten_in_place(
    repo: Path, images: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Triton's poll: a version whose files changed is loaded again, beside the serving one
    (checked first, no request fails); a rewrite that does not load leaves the old one serving,
    reported in the index, the log and the failure counter."""
    settings = repo_settings(repo, mode="poll", repository_poll_secs=0.2)
    package = repo / NAME / "1"
    with TestClient(create_app(settings)) as c:
        before = class_indices(c, images[:8])
        assert set(before) != {7}
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:  # requests all through the reload
            while not stop.is_set():
                statuses.append(infer_many(c, images[:2]).status_code)

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            rewrite_weights(package, favour=7)
            wait_until(lambda: class_indices(c, images[:8]) == [7] * 8)
        finally:
            stop.set()
            thread.join()
        assert statuses and set(statuses) == {200}
        assert index(c) == [{"name": NAME, "version": "1", "state": "READY", "reason": ""}]
        # A broken rewrite: weights the manifest's checksum does not match.
        with caplog.at_level(logging.ERROR, logger="service.repository"):
            (package / "weights.safetensors").write_bytes(b"half-written weights")
            wait_until(lambda: bool(index(c)[0]["reason"]))
        [entry] = index(c)
        assert entry["state"] == "READY" and entry["reason"].startswith("reload failed: ")
        assert "checksum mismatch for weights.safetensors" in entry["reason"]
        assert class_indices(c, images[:8]) == [7] * 8  # the last good files still serve
        failed = [r for r in caplog.records if "version 1 failed to load" in r.getMessage()]
        assert len(failed) == 1, caplog.records  # not retried on every poll
        metrics = c.get("/metrics").text
        assert f'anytime_model_load_failures_total{{model="{NAME}",version="1"}} 1.0' in metrics


def test_onnx_stages_that_disagree_with_the_weights_never_serve(
    tmp_path: Path, calibrated_package: Path
) -> None:
    from safetensors.torch import load_file, save_file

    from models.package import sha256_file
    from service.metrics import ServiceMetrics
    from service.repository.loading import ParityError, load_version

    pkg = shutil.copytree(calibrated_package, tmp_path / "stale")
    weights = load_file(pkg / "weights.safetensors")
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() > 1)
    weights[name] = weights[name] + 0.5  # retrained weights beside the old graphs
    save_file(weights, pkg / "weights.safetensors")
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = sha256_file(pkg / "weights.safetensors")
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    settings = repo_settings(tmp_path, backend="onnxruntime", precision="fp32")
    with pytest.raises(ParityError, match=r"ONNX stage 0 disagrees with the package's weights"):
        load_version(NAME, 1, str(pkg), settings, ServiceMetrics())
    load_version(NAME, 1, str(calibrated_package), settings, ServiceMetrics()).loaded.engine.stop()
