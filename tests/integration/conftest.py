"""Real servers for the integration tests: ``python -m service`` in subprocesses, real HTTP.

Each server listens on free ports (``--port 0``, ``--grpc-port 0``; the process prints the real
addresses) and is ready when ``/readyz`` says so. Servers start in parallel, once per test session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.package import ModelPackage
from tests.service.fixtures import load, sample_images, session_package

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    log: IO[str]
    grpc: str | None = None  # host:port of its gRPC API (None with --no-grpc)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def metrics(
        self, headers: dict[str, str] | None = None
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Sample name + sorted labels -> value, scraped from /metrics."""
        text = httpx.get(f"{self.url}/metrics", headers=headers or {}, timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def launch(
    package: Path, log_dir: Path, name: str, *args: str, module: str = "service", **env: str
) -> subprocess.Popen[str]:
    """Start a server process (``python -m module``, not yet ready); its stderr goes to
    ``log_dir/name.log``."""
    environ = {**os.environ, "ANYTIME_MODELS": json.dumps([str(package)]), **env}
    # One process unless the test asks for more: the default (auto) starts one per core.
    workers = () if "--workers" in args or "ANYTIME_WORKERS" in env else ("--workers", "1")
    log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 (closed by Server.stop)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--device",
            "cpu",
            *workers,
            *args,
        ],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def wait_ready(proc: subprocess.Popen[str], timeout: float = 120.0) -> Server:
    log: IO[str] = proc.log  # type: ignore[attr-defined]
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.wait(10)
        raise RuntimeError(f"server did not start: {line!r}\n{Path(log.name).read_text()}")
    url = line.split("http://", 1)[1].split()[0]
    grpc = None
    if "--no-grpc" not in proc.args:  # type: ignore[operator]
        grpc = proc.stdout.readline().split("gRPC on ", 1)[-1].strip()
    server = Server(f"http://{url}", proc, log, grpc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.logs()}")


API_KEY = "integration-secret"

SERVERS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    # torch backend, a batching delay long enough that concurrent requests share batches
    "torch": (
        ("--backend", "torch", "--batching.max-delay-ms", "40", "--batching.max-batch-size", "64"),
        {},
    ),
    # onnxruntime backend behind an API key, with a tiny queue (429s)
    "ort": (
        ("--backend", "onnxruntime", "--batching.queue-size", "4", "--batching.max-delay-ms", "40"),
        {"ANYTIME_AUTH__API_KEYS": json.dumps([API_KEY])},
    ),
    # a deadline nobody meets (504s)
    "deadline": (("--backend", "torch", "--request-timeout-s", "0.001"), {}),
}


@pytest.fixture(scope="session")
def calibrated_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_package(tmp_path_factory)


@pytest.fixture(scope="session")
def servers(
    calibrated_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("server-logs")
    procs = {n: launch(calibrated_package, logs, n, *a, **e) for n, (a, e) in SERVERS.items()}
    started: dict[str, Server] = {}
    try:
        for name, proc in procs.items():
            started[name] = wait_ready(proc)
        yield started
    finally:
        for name, proc in procs.items():
            if name in started:
                started[name].stop()
            elif proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    return sample_images(24)


@pytest.fixture(scope="session")
def reference_package(calibrated_package: Path) -> ModelPackage:
    return load(calibrated_package)
