"""Several server processes (``workers`` > 1): uvicorn's supervisor, one app and engine per worker.

A single process is serialised on its GIL; each worker is its own interpreter with its own model
and engine, all accepting on the one socket the parent bound. Workers are spawned (fresh
interpreters), so the parent hands them its command line in ``SERVICE_WORKER_ARGV`` and each
rebuilds the very settings the parent parsed: the same command line over the same environment and
settings file. The variable stays outside the ``ANYTIME_`` prefix, which the settings own.

Metrics: the parent makes a fresh ``PROMETHEUS_MULTIPROC_DIR`` before it spawns the workers, so
that prometheus_client starts in multiprocess mode in each of them (service/metrics.py), and
removes it at exit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from service.app import create_app
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings

ARGV_ENV = "SERVICE_WORKER_ARGV"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_APP = "service.workers:create_worker_app"


def create_worker_app() -> FastAPI:
    """The app of one worker process: the parent's settings, metrics aggregated across workers."""
    settings = ServiceSettings(_cli_parse_args=json.loads(os.environ[ARGV_ENV]))
    configure_logging(settings.log_level, settings.json_logs)
    metrics_dir = os.environ.get(METRICS_DIR_ENV)
    return create_app(settings, ServiceMetrics(Path(metrics_dir) if metrics_dir else None))


class _Supervisor(Multiprocess):
    """uvicorn's supervisor that also drops the live gauges of each worker that exited."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], metrics_dir: Path) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir
        self.pids: set[int] = set()

    def handle_signals(self) -> None:  # SIGHUP restarts and SIGTTOU retires workers
        super().handle_signals()
        self._forget_exited()

    def keep_subprocess_alive(self) -> None:  # replaces dead workers
        super().keep_subprocess_alive()
        self._forget_exited()

    def _forget_exited(self) -> None:
        pids = {p.pid for p in self.processes if p.pid is not None}
        for pid in self.pids - pids:
            mark_process_dead(pid, str(self.metrics_dir))
        self.pids = pids


def serve_workers(
    settings: ServiceSettings, argv: list[str], sock: socket.socket, options: dict[str, Any]
) -> int:
    """Run ``settings.workers`` server processes on ``sock`` until SIGTERM or SIGINT.

    Args:
        settings: the settings parsed from ``argv`` and the environment.
        argv: the command line the workers parse again.
        sock: the bound listening socket, shared by every worker.
        options: further ``uvicorn.Config`` arguments.

    Returns:
        The exit status: 0 after a drain, 3 when a worker failed to start.
    """
    metrics_dir = Path(tempfile.mkdtemp(prefix="anytime-metrics-"))
    saved = {name: os.environ.get(name) for name in (ARGV_ENV, METRICS_DIR_ENV)}
    os.environ[ARGV_ENV] = json.dumps(argv)
    os.environ[METRICS_DIR_ENV] = str(metrics_dir)
    try:
        config = uvicorn.Config(
            WORKER_APP,
            factory=True,
            workers=settings.workers,
            **options,
        )
        supervisor = _Supervisor(config, [sock], metrics_dir)
        supervisor.run()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(metrics_dir, ignore_errors=True)
    # uvicorn's supervisor stops every worker when one fails to start (bad package, say).
    return 3 if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0
