"""A Docker engine for the image and stack tests: the CLI, images that must exist, health.

``docker/local.sh smoke`` and ``docker/local.sh stack`` start the engine when none runs and set
``DOCKER`` to the CLI they chose; elsewhere ``docker`` on PATH is used. Without an engine or the
built images the tests skip with the fix, or fail under CI (``tests/tools.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.deploy.promql import ROOT
from tests.tools import missing_tool

SMOKE_IMAGE = "anytime:cpu"


def docker_cli() -> str:
    """The docker CLI, once an engine answers it."""
    cli = shutil.which(os.environ.get("DOCKER", "docker"))
    if cli is None:
        missing_tool("no docker CLI: apt-get install docker.io, then make docker-build")
    r = subprocess.run([cli, "info"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        reason = r.stderr.strip()[:200]
        missing_tool(f"no Docker engine answers ({reason}): make docker-smoke starts one")
    return cli


def docker(cli: str, *args: str, timeout: float = 120, check: bool = True) -> str:
    """Run ``docker ARGS``; its stdout, stripped (stderr in the failure message)."""
    r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and r.returncode != 0:
        output = r.stdout[-2000:] + r.stderr[-2000:]
        pytest.fail(f"docker {' '.join(args)}: exit {r.returncode}\n{output}")
    return r.stdout.strip()


def logs(cli: str, container: str, tail: int | None = None) -> str:
    """A container's output, stdout and stderr interleaved (the service logs to stderr)."""
    args = [cli, "logs", *(["--tail", str(tail)] if tail else []), container]
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    return r.stdout


def has_image(cli: str, tag: str) -> bool:
    r = subprocess.run([cli, "image", "inspect", tag], capture_output=True, timeout=60)
    return r.returncode == 0


def require_image(cli: str, tag: str, build: str) -> None:
    if not has_image(cli, tag):
        missing_tool(f"image {tag} is not built: {build}")


def wait_healthy(cli: str, container: str, timeout: float) -> None:
    """Wait for the image's own HEALTHCHECK to report ``healthy``; fail with the logs otherwise."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = docker(cli, "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", container)
        if status == "running healthy":
            return
        if not status.startswith("running") or status.endswith("unhealthy"):
            break
        time.sleep(1)
    output = logs(cli, container, 40)
    pytest.fail(f"{container}: {status!r}, not healthy within {timeout:.0f} s\n{output}")
