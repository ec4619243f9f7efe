"""App wiring: health, API keys, metrics exposition, settings sources, start-up failures, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import ModelLoadError, create_app
from service.settings import ServiceSettings
from tests.service.conftest import make_settings
from tests.service.fixtures import NAME
from tests.tools import require_binary

METRICS = [
    "anytime_request_duration_seconds", "anytime_requests_in_flight", "anytime_queue_wait_seconds",
    "anytime_queue_depth", "anytime_batch_size", "anytime_exit_images_total",
    "anytime_image_compute_fraction", "anytime_flops_total", "anytime_flops_saved_total",
    "anytime_rejections_total", "anytime_model_info",
]  # fmt: skip


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {NAME: True}
    assert client.get("/docs").status_code == 200
    assert "/v1/models/{name}/classify" in client.get("/openapi.json").json()["paths"]


def test_metrics_exposition(client: TestClient, images: list[bytes]) -> None:
    client.post(f"/v1/models/{NAME}/classify", content=images[0], headers={"content-type": "image/png"})
    client.post(
        "/v1/models/unknown-model/classify", content=images[0], headers={"content-type": "image/png"}
    )
    text = client.get("/metrics").text
    for name in METRICS:
        assert f"# TYPE {name} " in text, name
    info = f'backend="torch",device="cpu",model="{NAME}",num_exits="3",version="1"'
    assert f"anytime_model_info{{{info}}} 1.0" in text
    assert 'route="/v1/models/{name}/classify",status="200"' in text
    assert 'model="unknown",route="/v1/models/{name}/classify",status="404",version=""' in text
    promtool = require_binary("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


@pytest.mark.parametrize("protect", [False, True])
def test_api_keys(calibrated_package: Path, images: list[bytes], protect: bool) -> None:
    settings = make_settings(
        calibrated_package, auth={"api_keys": ["k1", "s3cret"], "protect_metrics": protect}, warmup=False
    )
    url = f"/v1/models/{NAME}/classify"
    png = {"content": images[0], "headers": {"content-type": "image/png"}}
    with TestClient(create_app(settings)) as c:
        denied = c.post(url, **png)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        assert denied.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get(f"/v2/models/{NAME}").status_code == 401
        ok = c.post(url, content=images[0], headers={"content-type": "image/png", "x-api-key": "s3cret"})
        assert ok.status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert c.get(open_path).status_code == 200
        assert c.get("/metrics").status_code == (401 if protect else 200)
        assert c.get("/metrics", headers={"x-api-key": "k1"}).status_code == 200


def test_settings_from_env_file_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "service.yaml"
    cfg.write_text(
        "models: [a, b]\nbatching:\n  max_batch_size: 8\n  max_delay_ms: 9\nbackend: onnxruntime\n"
    )
    monkeypatch.setenv("ANYTIME_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("ANYTIME_BATCHING__MAX_BATCH_SIZE", "16")
    s = ServiceSettings()
    assert s.models == ["a", "b"] and s.backend == "onnxruntime"
    assert s.batching.max_batch_size == 16 and s.batching.max_delay_ms == 9  # env beats the file
    assert ServiceSettings(backend="torch").backend == "torch"  # arguments beat both
    cli = ServiceSettings(backend="torch", _cli_parse_args=["--backend", "onnxruntime"])
    assert cli.backend == "onnxruntime"  # and the command line beats arguments
    monkeypatch.setenv("ANYTIME_MODELS", json.dumps(["c"]))
    assert ServiceSettings().models == ["c"]
    with pytest.raises(ValueError):
        ServiceSettings(batching={"max_batch_size": 0})


def test_a_missing_package_stops_start_up_with_its_name(tmp_path: Path) -> None:
    app = create_app(ServiceSettings(models=[str(tmp_path / "missing-pkg")], intra_op_threads=0))
    with pytest.raises(ModelLoadError, match="missing-pkg"), TestClient(app):
        pass


def test_a_default_budget_below_the_budget_table_stops_start_up(calibrated_package: Path) -> None:
    # Else /readyz would say ready and every request without a budget would get a 422.
    app = create_app(make_settings(calibrated_package, default_budget=0.3, warmup=False))
    match = r"default budget: budget 0\.3 is below what this model offers; use a budget betw"
    with pytest.raises(ModelLoadError, match=match), TestClient(app):
        pass


def test_cli_help_lists_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for flag in ("--models", "--host", "--port", "--backend", "--device", "--batching.max-batch-size",
                 "--batching.max-delay-ms", "--batching.queue-size", "--batching.workers",
                 "--default-budget", "--request-timeout-s", "--auth.api-keys", "--log-level",
                 "--json-logs", "--config-file", "--limits.max-image-pixels"):  # fmt: skip
        assert flag in out, flag


def test_several_models_each_with_its_own_engine(
    calibrated_package: Path, tmp_path: Path, images: list[bytes]
) -> None:
    from models.package import new_manifest, save_package
    from tests.conftest import CIFAR_PREPROCESSING, tiny_model

    model, _ = tiny_model("resnet_exits")
    manifest = new_manifest(
        model.eval(),
        name="tiny-resnet",
        classes=[f"c{i}" for i in range(10)],
        preprocessing=CIFAR_PREPROCESSING,
    )
    second = save_package(model, manifest, tmp_path / "tiny-resnet", export_onnx=False)
    settings = make_settings(
        calibrated_package, models=[str(calibrated_package), str(second)], backend="auto"
    )
    with TestClient(create_app(settings)) as c:
        assert sorted(m["name"] for m in c.get("/v1/models").json()["models"]) == [NAME, "tiny-resnet"]
        r = c.post(
            "/v1/models/tiny-resnet/classify", content=images[0], headers={"content-type": "image/png"}
        )
        assert r.status_code == 200
        assert (
            r.json()["budget"] == 1.0 and r.json()["predictions"][0]["exit"] == 3
        )  # no table: budget 1
        text = c.get("/metrics").text
        assert (
            'anytime_model_info{backend="torch",device="cpu",model="tiny-resnet",num_exits="4"' in text
        )
        assert 'anytime_queue_depth{model="tiny-resnet",version="1"} 0.0' in text
        assert f'anytime_queue_depth{{model="{NAME}",version="1"}} 0.0' in text
    dup = make_settings(calibrated_package, models=[str(calibrated_package)] * 2)
    with pytest.raises(ModelLoadError, match="named"), TestClient(create_app(dup)):
        pass


def test_cli_refuses_a_missing_package_with_a_clear_message(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0", "--models", f'["{tmp_path / "nope"}"]'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "model package not found" in run.stderr and "Traceback" not in run.stderr


def test_the_cli_serves_with_uvloop_and_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import service.__main__ as cli

    seen: list[uvicorn.Config] = []

    class Recording(uvicorn.Server):
        def run(self, sockets: object = None) -> None:  # type: ignore[override]
            seen.append(self.config)

    monkeypatch.setattr(cli.uvicorn, "Server", Recording)
    assert cli.main(["--port", "0", "--workers", "1"]) == 3  # recorded, never started
    (config,) = seen
    config.load()  # resolves the names: fails if either C implementation is missing
    assert (config.loop, config.http) == ("uvloop", "httptools")
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
