"""Slow, needs Docker: the compose stack for real (``make docker-stack``).

docker-compose.yml's CPU profile (two API replicas, nginx, Prometheus; Grafana's image is not
needed here: test_prometheus_live.py runs every dashboard query in a real Prometheus) comes up
from the built images. Traffic through nginx goes on while one API container is killed, and
every request is answered; Prometheus scrapes both replicas (``up`` = 1) and has loaded and
evaluated every alert rule of docker/prometheus/alerts.yml. Where the nginx and Prometheus images
cannot be pulled, docker-compose.local.yml swaps in the ones docker/local.sh builds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.containers import SMOKE_IMAGE, docker, docker_cli, has_image, require_image
from tests.deploy.promql import ALERTS, ROOT
from tests.deploy.servers import LOOPBACK, free_port, wait_until
from tests.tools import missing_tool

pytestmark = [pytest.mark.slow, pytest.mark.docker]

SERVICES = ["api-cpu-1", "api-cpu-2", "nginx-cpu", "prometheus"]
LOCAL_OVERRIDE = ROOT / "docker-compose.local.yml"
IMAGES = sorted((Path(__file__).parent / "images").glob("*.jpg"))
MODEL = "msdnet-cifar10-imta"  # the image's default package
# Bounded load: REQUESTS from CLIENTS clients; the kill comes once KILL_AFTER are answered.
REQUESTS = 200
CLIENTS = 4
KILL_AFTER = 50


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    nginx: str
    prometheus: str

    def run(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run([*self.compose, *args], capture_output=True, text=True, env=self.env,
                           cwd=ROOT, timeout=timeout)  # fmt: skip
        if r.returncode != 0:
            pytest.fail(f"{' '.join(args)}: exit {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        return r.stdout.strip()


def _compose_files(cli: str) -> list[str]:
    """docker-compose.yml, plus the local override where the images it names are not here."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    wanted = [services[name]["image"] for name in ("nginx-cpu", "prometheus")]
    files = ["-f", "docker-compose.yml"]
    if not all(has_image(cli, image) for image in wanted):
        files += ["-f", LOCAL_OVERRIDE.name]
        overrides = yaml.safe_load(LOCAL_OVERRIDE.read_text())["services"]
        for name in ("nginx-cpu", "prometheus"):
            require_image(cli, overrides[name]["image"], "docker/local.sh build stack")
    return files


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    cli = docker_cli()
    require_image(cli, SMOKE_IMAGE, "make docker-build")
    binary = shutil.which("docker-compose")
    if binary is None:
        missing_tool("docker-compose not installed: apt-get install docker-compose")
    project = f"anytime-test-{uuid.uuid4().hex[:8]}"
    compose = [binary, "--profile", "cpu", "--project-name", project, *_compose_files(cli)]
    nginx_port, prometheus_port = free_port(), free_port()
    env = {**os.environ, "NGINX_PORT": str(nginx_port), "PROMETHEUS_PORT": str(prometheus_port)}
    s = Stack(compose, env, f"http://{LOOPBACK}:{nginx_port}", f"http://{LOOPBACK}:{prometheus_port}")
    try:
        # nginx starts once both replicas report healthy (depends_on: service_healthy).
        s.run("up", "--detach", "--no-build", *SERVICES, timeout=600)
        yield s
    finally:
        with contextlib.suppress(subprocess.SubprocessError, pytest.fail.Exception):
            (tmp_path / "stack.log").write_text(s.run("logs", "--no-color", "--tail", "200"))
        s.run("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=300)


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def _replicas_up(prometheus: str) -> dict[str, float]:
    series = _query(prometheus, 'up{job="anytime"}')
    return {s["metric"]["instance"]: float(s["value"][1]) for s in series}


def test_stack_survives_a_killed_replica(stack: Stack) -> None:
    wait_until(lambda: httpx.get(f"{stack.nginx}/nginx/healthz", timeout=2).status_code == 200,
               60, "nginx")  # fmt: skip

    # Prometheus scrapes each replica by its compose name, and both answer.
    wait_until(lambda: _replicas_up(stack.prometheus) == {"api-1:8000": 1.0, "api-2:8000": 1.0},
               90, "Prometheus: up = 1 for both replicas")  # fmt: skip

    # Every alert rule of alerts.yml is loaded, healthy, and has been evaluated.
    expected = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}

    def rules_evaluated() -> bool:
        groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return {r["name"] for r in rules} == expected and all(
            r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
        )

    wait_until(rules_evaluated, 60, "Prometheus: alert rules loaded and evaluated")

    # Traffic through nginx; one API container is killed (SIGKILL) once KILL_AFTER are answered.
    victim = stack.run("ps", "-q", "api-cpu-1")
    statuses: list[int] = []
    lock = threading.Lock()
    killed = threading.Event()
    cli = docker_cli()

    def one(i: int) -> None:
        image = IMAGES[i % len(IMAGES)]
        files = {"files": (image.name, image.read_bytes(), "image/jpeg")}
        try:
            r = httpx.post(f"{stack.nginx}/v1/models/{MODEL}/classify", files=files, timeout=60)
            ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
            status = r.status_code if ok else -r.status_code
        except httpx.HTTPError:
            status = 0
        with lock:
            statuses.append(status)
            kill = len(statuses) == KILL_AFTER
        if kill:
            docker(cli, "kill", victim)
            killed.set()

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(REQUESTS)))
    assert killed.is_set()
    failed = [s for s in statuses if s != 200]
    print(f"{len(statuses) - len(failed)}/{len(statuses)} answered 200 through nginx; api-cpu-1 killed")
    assert len(statuses) == REQUESTS and not failed, failed

    # The survivor's metrics reached Prometheus: it scraped the classifications it answered.
    def scraped() -> bool:
        result = _query(stack.prometheus, f'sum(anytime_exit_images_total{{model="{MODEL}"}})')
        return bool(result) and float(result[0]["value"][1]) > 0

    wait_until(scraped, 60, "Prometheus: classifications scraped")


def test_stack_serves_a_version_copied_into_the_repository_volume(stack: Stack) -> None:
    """An operator's deployment: a package copied into ./model-repository/<name>/<version>/ is
    served by both replicas through nginx at the next poll, and removing it unloads it."""
    name = f"repo-test-{uuid.uuid4().hex[:6]}"
    model_dir = ROOT / "model-repository" / name
    staging = model_dir / ".1.partial"  # dot names are never scanned: copy whole, then rename
    shutil.copytree(ROOT / "packages" / "default", staging)
    staging.rename(model_dir / "1")
    try:

        def listed() -> bool:
            r = httpx.get(f"{stack.nginx}/v1/models", timeout=10)
            return any(m["name"] == name and m["version"] == "1" for m in r.json()["models"])

        # Both replicas poll (15 s) and load on their own: nginx spreads the requests over both.
        wait_until(lambda: all(listed() for _ in range(4)), 180, f"{name} v1 listed by both replicas")
        image = IMAGES[0]
        for _ in range(4):
            files = {"files": (image.name, image.read_bytes(), "image/jpeg")}
            r = httpx.post(f"{stack.nginx}/v1/models/{name}/classify?version=1", files=files, timeout=60)
            assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text
    finally:
        shutil.rmtree(model_dir)
    wait_until(lambda: not any(listed() for _ in range(4)), 120, f"{name} unloaded by both replicas")
