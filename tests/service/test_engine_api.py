"""Engine options through the REST API: deadline_ms (v1 and v2), settings, controller and guard."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine.backends import TorchBackend
from service.engine.costs import StageCosts
from tests.service.conftest import make_settings
from tests.service.fixtures import NAME
from tests.service.test_engine_modes import _SlowBackend
from tests.service.v2_client import bytes_request, decode_response

URL = f"/v1/models/{NAME}/classify"
INFER = f"/v2/models/{NAME}/infer"


def _files(blobs: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


def test_deadline_exits_over_v1_and_v2(calibrated_package: Path, images: list[bytes]) -> None:
    settings = make_settings(calibrated_package, batching={"mode": "rebatch"})
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.anytime.registry.resolve(NAME).loaded.engine  # type: ignore[attr-defined]
        engine.backend = _SlowBackend(TorchBackend(engine.backend.model, "cpu"), delay=0.5)
        engine.costs = StageCosts(3)  # what the slow stages cost, as if measured
        for k, seconds in enumerate((0.001, 0.5, 0.5)):
            engine.costs.observe(k, 1, seconds)
            engine.costs.observe(k, 64, seconds)
        # budget 1.0 would run to exit 2; 300 ms allow exit 0 but not stage 1 (500 ms).
        r = client.post(URL, params={"budget": 1.0, "deadline_ms": 300}, files=_files(images[:3]))
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [(p["exit"], p["deadline_exit"]) for p in preds] == [(0, True)] * 3
        body, headers = bytes_request(images[:2], binary=False, budget=1.0, deadline_ms=300)
        r2 = client.post(INFER, content=body, headers=headers)
        assert r2.status_code == 200, r2.text
        out = decode_response(r2.content, r2.headers)
        assert list(out["exit"]) == [0, 0] and list(out["deadline_exit"]) == [True, True]
        # Not even exit 0 in time: 504, as before.
        r3 = client.post(URL, params={"deadline_ms": 0.001}, files=_files(images[:1]))
        assert r3.status_code == 504 and r3.json()["error"]["code"] == "deadline_exceeded"
        # No deadline: the full run, and v2 lists no deadline_exit output unless asked.
        r4 = client.post(URL, params={"budget": 1.0}, files=_files(images[:1]))
        assert [(p["exit"], p["deadline_exit"]) for p in r4.json()["predictions"]] == [(2, False)]
        metrics = client.get("/metrics").text
    assert f'anytime_deadline_exits_total{{model="{NAME}",version="1"}} 5.0' in metrics


def test_bad_deadline_is_422(client: TestClient, images: list[bytes]) -> None:
    r = client.post(URL, params={"deadline_ms": -1}, files=_files(images[:1]))
    assert r.status_code == 422 and "deadline_ms" in r.text
    body, headers = bytes_request(images[:1], binary=False, deadline_ms="soon")
    assert client.post(INFER, content=body, headers=headers).status_code == 422
    body, headers = bytes_request(images[:1], binary=False, deadline_ms=0)
    assert client.post(INFER, content=body, headers=headers).status_code == 422


def test_controller_and_guard_gauges_are_exported(calibrated_package: Path, images: list[bytes]) -> None:
    settings = make_settings(
        calibrated_package,
        slo={"p99_target_ms": 10_000},
        guard={"fraction": 1.0, "window": 50},
    )
    with TestClient(create_app(settings)) as client:
        r = client.post(URL, params={"budget": 0.6}, files=_files(images))
        assert r.status_code == 200
        exits = [p["exit"] for p in r.json()["predictions"]]
        # Shadows reach exit 2 after the answers left: wait (bounded) for their audits.
        deadline = time.monotonic() + 20
        while True:
            metrics = client.get("/metrics").text
            audited = {
                x.split('exit="')[1][0]
                for x in metrics.splitlines()
                if x.startswith("anytime_exit_agreement_ratio{")
            }
            if audited >= {str(e) for e in exits if e < 2} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert f'anytime_effective_budget{{model="{NAME}",version="1"}} 0.6' in metrics
    assert f'anytime_exit_threshold{{exit="0",model="{NAME}",version="1"}}' in metrics
    # Every early answer was audited against exit 2 (guard fraction 1.0).
    for k in {e for e in exits if e < 2}:
        line = next(
            x
            for x in metrics.splitlines()
            if x.startswith("anytime_exit_agreement_ratio") and f'exit="{k}"' in x
        )
        assert 0.0 <= float(line.split()[-1]) <= 1.0


def test_help_lists_the_new_settings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    for flag in (
        "--batching.mode",
        "--batching.rebatch-max-wait-ms",
        "--slo.p99-target-ms",
        "--guard.fraction",
        "--guard.floor",
    ):
        assert flag in out


def test_v2_deadline_exit_output_on_request(client: TestClient, images: list[bytes]) -> None:
    body, headers = bytes_request(images[:2], binary=False)
    import json

    req = json.loads(body)
    req["outputs"] = [{"name": "deadline_exit"}]
    r = client.post(INFER, content=json.dumps(req).encode(), headers=headers)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert [(o["name"], o["datatype"], o["data"]) for o in out] == [
        ("deadline_exit", "BOOL", [False, False])
    ]
    assert np.asarray(out[0]["data"]).dtype == bool
