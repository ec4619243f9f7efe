"""Real processes on loopback for the slow deployment tests: the service, Prometheus, nginx.

Every process listens on 127.0.0.1 only and is stopped by its own handle when the test ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.deploy.promql import ROOT
from tests.tools import require_binary

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval: float = 0.2,
) -> None:
    """Poll ``check`` every ``interval`` seconds until true; fail with the process log if it dies
    or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited {proc.returncode}\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError, OSError):
            if check():
                return
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal one process we started and wait for it; kill it if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def png_bytes(seed: int, size: int = 32) -> bytes:
    """A small deterministic RGB image, PNG-encoded."""
    img = Image.frombytes(
        "RGB", (size, size), bytes((seed * 37 + i * 11) % 256 for i in range(size * size * 3))
    )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


@contextlib.contextmanager
def run_service(
    package: Path,
    workdir: Path,
    name: str = "api",
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[Service]:
    """``python -m service`` on a free loopback port, ready (``/readyz`` 200) when yielded.

    ``env`` replaces the test defaults below (host and ports always stay loopback and free).
    """
    log = workdir / f"{name}.log"
    settings = {
        "ANYTIME_MODELS": f'["{package}"]',
        "ANYTIME_BACKEND": "torch",
        "ANYTIME_TORCH__INTRA_OP_THREADS": "1",  # two replicas share a 2-core machine
        "ANYTIME_WORKERS": "1",  # a replica is one process here
        "ANYTIME_LOG_LEVEL": "warning",
    }
    if env is not None:
        settings = env
    full_env = {
        **os.environ,
        **settings,
        "ANYTIME_HOST": LOOPBACK,
        "ANYTIME_PORT": "0",
        "ANYTIME_GRPC_PORT": "0",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=cwd,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        found: list[str] = []

        def announced() -> bool:
            found[:] = re.findall(
                r"serving on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace")
            )
            return bool(found)

        wait_until(announced, 60, f"{name} start", proc, log)
        url = found[0]
        wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
            120,
            f"{name} ready",
            proc,
            log,
        )
        yield Service(proc, url, log)
    finally:
        stop(proc)


@contextlib.contextmanager
def run_prometheus(config: Path, workdir: Path) -> Iterator[str]:
    """Debian's prometheus with ``config`` on a free loopback port; yields its base URL."""
    binary = require_binary("prometheus", "prometheus")
    port = free_port()
    log = workdir / "prometheus.log"
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200,
            60,
            "prometheus",
            proc,
            log,
        )
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def run_nginx(config: Path, workdir: Path, url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Debian's nginx in the foreground with ``config``; yields once ``url`` answers."""
    binary = require_binary("nginx", "nginx")
    log = workdir / "nginx.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-c", str(config), "-p", str(workdir), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: httpx.get(f"{url}/nginx/healthz", timeout=2).status_code == 200,
            30,
            "nginx",
            proc,
            log,
        )
        yield proc
    finally:
        stop(proc, signal.SIGQUIT)  # graceful shutdown for nginx
