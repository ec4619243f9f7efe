"""Slow, needs Docker: the CPU image end to end (``make docker-smoke``).

The image built from docker/Dockerfile.cpu starts as its non-root user, its own HEALTHCHECK
reports it healthy, it classifies real CIFAR-10 JPEGs (tests/deploy/images) with exactly the
answer of ``make serve`` (the same package, the same budget), its /metrics count them, and on
SIGTERM it answers the requests in flight, then exits 0.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.containers import (
    SMOKE_IMAGE,
    docker,
    docker_cli,
    logs,
    require_image,
    wait_healthy,
)
from tests.deploy.promql import ROOT
from tests.deploy.servers import run_service, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]

PACKAGE = ROOT / "packages" / "default"
IMAGES = sorted((Path(__file__).parent / "images").glob("*.jpg"))  # CIFAR-10 train, <1 KB each
IMAGE_UID = "10001"  # the Dockerfile's USER
DRAIN_REQUESTS = 4  # sent before SIGTERM; 4 x 64 images fill the default queue (256)
DRAIN_BATCH = 64  # images per request (the service's limit), so that some are still in flight


def _classify(url: str, model: str, budget: float, copies: int = 1) -> list[dict[str, Any]]:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in IMAGES] * copies
    r = httpx.post(f"{url}/v1/models/{model}/classify", params={"budget": budget}, files=files,
                   timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    predictions: list[dict[str, Any]] = r.json()["predictions"]
    assert len(predictions) == len(files)
    return predictions


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(cli, container name, base URL) of the CPU image, published on an ephemeral loopback port."""
    cli = docker_cli()
    require_image(cli, SMOKE_IMAGE, "make docker-build")
    name = f"anytime-smoke-{uuid.uuid4().hex[:8]}"
    docker(cli, "run", "--detach", "--name", name, "--publish", "127.0.0.1::8000", SMOKE_IMAGE)
    try:
        wait_healthy(cli, name, timeout=300)
        address = docker(cli, "port", name, "8000/tcp").splitlines()[0]
        yield cli, name, f"http://{address}"
    finally:
        (tmp_path / "container.log").write_text(logs(cli, name))
        docker(cli, "rm", "--force", name, check=False)


def test_cpu_image_serves_like_make_serve(container: tuple[str, str, str], tmp_path: Path) -> None:
    cli, name, url = container
    manifest = json.loads((PACKAGE / "manifest.json").read_text())
    model, budget = manifest["name"], float(manifest["default_budget"])
    assert len(IMAGES) >= 4

    # The declared non-root user runs the server (PID 1), not only `docker exec`.
    assert docker(cli, "inspect", "-f", "{{.Config.User}}", name) == f"{IMAGE_UID}:{IMAGE_UID}"
    status = docker(cli, "exec", name, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {IMAGE_UID}

    in_image = _classify(url, model, budget)

    # `make serve`: the same package from the checkout, with make serve's settings, at the backend
    # and precision the image's `auto` chose (each side times its candidates at start-up, and a
    # busy machine can tip the choice: int8 and fp32 answers differ by ~1e-3).
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["models"]
    precision = next(m["precision"] for m in models if m["name"] == model)
    info = next(ln for ln in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
                if ln.startswith("anytime_model_info{"))  # fmt: skip
    backend = info.split('backend="', 1)[1].split('"', 1)[0]
    make_serve = {"ANYTIME_MODELS": f'["{PACKAGE}"]', "ANYTIME_BACKEND": backend,
                  "ANYTIME_PRECISION": precision}  # fmt: skip
    with run_service(PACKAGE, tmp_path, "make-serve", env=make_serve) as host:
        on_host = _classify(host.url, model, budget)
    for path, a, b in zip(IMAGES, in_image, on_host, strict=True):
        assert (a["class_name"], a["exit"]) == (b["class_name"], b["exit"]), path.name
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-4), path.name
        print(f"{path.name}: {a['class_name']} at exit {a['exit']} ({a['confidence']:.3f})")

    # Every worker process of the image is up (workers auto: one per core the container may use,
    # at most 8): a scrape counts all, and each gauge is one value for the server (the info gauge
    # is 1, not one per worker).
    cores = docker(cli, "exec", name, "python", "-c", "import os; print(len(os.sched_getaffinity(0)))")
    workers = min(int(cores.strip()), 8)
    wait_until(lambda: logs(cli, name).count('"message": "ready: ') >= workers, 120, "workers ready")
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert _metric(metrics, "anytime_exit_images_total", model=model) == len(IMAGES)
    assert _metric(metrics, "anytime_request_duration_seconds_count", model=model, status="200") == 1
    assert _metric(metrics, "anytime_model_info", model=model, device="cpu") == 1

    # SIGTERM with requests in flight: each is answered, then the process exits 0.
    answers: list[int] = []

    def one() -> None:
        answers.append(len(_classify(url, model, budget, copies=DRAIN_BATCH // len(IMAGES))))

    threads = [threading.Thread(target=one) for _ in range(DRAIN_REQUESTS)]
    for t in threads:
        t.start()

    def all_accepted_some_in_flight() -> bool:
        # Signal only once the server has every request (none would be refused at the door)
        # and still works on at least one (so the drain is what answers it).
        text = httpx.get(f"{url}/metrics", timeout=5).text
        busy = _metric(text, "anytime_requests_in_flight", route="/v1/models/{name}/classify")
        done = _metric(text, "anytime_request_duration_seconds_count", model=model) - 1
        return busy >= 1 and busy + done == DRAIN_REQUESTS

    # Polled often: with int8 stages on a fast CPU the four requests are in flight for well under
    # a second, and a 0.2 s poll could miss that window (1 of 5 runs here).
    wait_until(all_accepted_some_in_flight, 60, "requests in flight", interval=0.01)
    docker(cli, "kill", "--signal", "TERM", name)
    for t in threads:
        t.join(timeout=120)
    assert answers == [DRAIN_BATCH] * DRAIN_REQUESTS
    assert docker(cli, "wait", name, timeout=90) == "0"
    output = logs(cli, name)
    assert "shutting down: draining" in output, output[-2000:]
