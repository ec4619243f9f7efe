"""Engine modes over real HTTP: a rebatching server with the SLO controller and the guard on."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from models.package import ModelPackage
from tests.integration.conftest import Server, launch, wait_ready
from tests.service.fixtures import NAME, reference_answers
from tests.service.v2_client import bytes_request, decode_response
from tests.tools import require_binary

URL = f"/v1/models/{NAME}/classify"


@pytest.fixture(scope="module")
def rebatch_server(
    calibrated_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    args = ("--backend", "torch", "--batching.mode", "rebatch", "--batching.max-batch-size", "16")
    env = {"ANYTIME_SLO__P99_TARGET_MS": "60000", "ANYTIME_GUARD__FRACTION": "1.0"}
    server = wait_ready(
        launch(calibrated_package, tmp_path_factory.mktemp("logs"), "rebatch", *args, **env)
    )
    try:
        yield server
    finally:
        server.stop()


def test_rebatch_server_answers_like_the_model_alone(
    rebatch_server: Server, images: list[bytes], reference_package: ModelPackage
) -> None:
    budgets = [0.6, 0.8, 1.0, 0.6, 0.8, 0.6]

    def one(budget: float) -> httpx.Response:
        files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images[:10])]
        with rebatch_server.client() as c:
            return c.post(URL, files=files, params={"budget": budget, "deadline_ms": 20_000})

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, budgets))
    for budget, r in zip(budgets, responses, strict=True):
        assert r.status_code == 200, r.text
        entry = reference_package.manifest.budget_entry(budget)
        want = reference_answers(reference_package, images[:10], entry.thresholds)
        got = r.json()["predictions"]
        assert [(p["exit"], p["class_index"], p["deadline_exit"]) for p in got] == [
            (w.exit, w.class_index, False) for w in want
        ]
    deadline = time.monotonic() + 20  # shadows reach exit 2 after the answers left
    m = rebatch_server.metrics()
    while (
        not any(name == "anytime_exit_agreement_ratio" for name, _ in m) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
        m = rebatch_server.metrics()
    answered = sum(v for (name, _), v in m.items() if name == "anytime_exit_images_total")
    assert answered == 60  # none lost, none twice
    assert (
        m[("anytime_effective_budget", (("model", NAME), ("version", "1")))] == 0.6
    )  # the package's default
    # The guard audited early answers against exit 2 (fraction 1.0).
    assert any(name == "anytime_exit_agreement_ratio" for name, _ in m)


def test_v2_deadline_parameter_over_http(rebatch_server: Server, images: list[bytes]) -> None:
    body, headers = bytes_request(images[:3], binary=True, deadline_ms=20_000, budget=1.0)
    with rebatch_server.client() as c:
        r = c.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = decode_response(r.content, r.headers)
    assert list(out["exit"]) == [2, 2, 2] and not out["deadline_exit"].any()


def test_new_metrics_pass_promtool(rebatch_server: Server, images: list[bytes]) -> None:
    promtool = require_binary("promtool", "prometheus")
    with rebatch_server.client() as c:
        c.post(URL, content=images[0], headers={"content-type": "image/png"})
        text = c.get("/metrics").text
    for name in ("anytime_deadline_exits_total", "anytime_effective_budget", "anytime_exit_threshold"):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
