"""Several server processes (``workers`` > 1): uvicorn's supervisor, one app and engine per worker.

A single process is serialised on its GIL; each worker is its own interpreter with its own model
and engine, all accepting on the one socket the parent bound. Workers are spawned (fresh
interpreters), so the parent hands them its command line in ``SERVICE_WORKER_ARGV`` and each
rebuilds the very settings the parent parsed: the same command line over the same environment and
settings file. The variable stays outside the ``ANYTIME_`` prefix, which the settings own.

Cores: with ``pin_workers`` (on by default) the parent binds each worker process to its own share
of the cores it may use (``core_groups``). A process's threads (event loop, engine worker,
decoding) hand its interpreter lock to each other all the time; on one core that is a cheap
switch, across cores a wake-up of the other core. Measured on 2 cores with 2 workers: 5-19 %
more images/s over HTTP in two sittings (docs/serving-performance.md).

Metrics: the parent makes a fresh ``PROMETHEUS_MULTIPROC_DIR`` before it spawns the workers, so
that prometheus_client starts in multiprocess mode in each of them (service/metrics.py), and
removes it at exit. Likewise a directory where the first worker records what ``--backend auto``
chose for each package, so that every worker serves the same backend
(service/engine/choices.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from service.app import create_app
from service.engine.choices import BackendChoices
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings
from service.topology.process import EngineProcess, EngineStartError

ARGV_ENV = "SERVICE_WORKER_ARGV"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CHOICES_DIR_ENV = "SERVICE_WORKER_BACKENDS"
ENGINE_ADDRESS_ENV = "SERVICE_ENGINE_ADDRESS"
CONTROL_DIR_ENV = "SERVICE_WORKER_CONTROL"  # what every worker serves (service/repository/shared.py)
WORKER_APP = "service.workers:create_worker_app"
log = logging.getLogger("anytime.workers")


def die_with_parent() -> None:
    """On Linux, have the kernel send this worker SIGTERM when its parent dies. A parent killed
    with SIGKILL runs nothing that stops its workers: they would go on serving, unsupervised, on
    the shared socket; with this they drain and exit."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the call took effect
        os.kill(os.getpid(), signal.SIGTERM)


def create_worker_app() -> FastAPI:
    """The app of one worker process: the parent's settings, metrics aggregated across workers."""
    die_with_parent()
    settings = ServiceSettings(_cli_parse_args=json.loads(os.environ[ARGV_ENV]))
    configure_logging(settings.log_level, settings.json_logs)
    metrics_dir = os.environ.get(METRICS_DIR_ENV)
    choices_dir = os.environ.get(CHOICES_DIR_ENV)
    control_dir = os.environ.get(CONTROL_DIR_ENV)
    metrics = ServiceMetrics(Path(metrics_dir) if metrics_dir else None)
    loader, ordering = None, None
    engine_address = os.environ.get(ENGINE_ADDRESS_ENV)
    grpc_port = settings.grpc_port if settings.grpc else None  # the port the parent holds
    if engine_address:  # a front end of the shared engine process (service/topology)
        from service.topology.front_end import FrontEnd

        front_end = FrontEnd(engine_address, settings, metrics)
        loader, ordering = front_end.load, front_end.ordering()
    return create_app(
        settings,
        metrics,
        BackendChoices(Path(choices_dir)) if choices_dir else None,
        Path(control_dir) if control_dir else None,
        loader=loader,
        grpc_port=grpc_port,
        ordering=ordering,
    )


def core_groups(cores: Sequence[int], n: int) -> list[list[int]]:
    """``cores`` split into ``n`` contiguous groups, one per worker (sizes differ by at most one);
    with more workers than cores, workers share single cores round-robin."""
    if n <= len(cores):
        return [list(cores[i * len(cores) // n : (i + 1) * len(cores) // n]) for i in range(n)]
    return [[cores[i % len(cores)]] for i in range(n)]


def pin_process(pid: int, cores: Sequence[int]) -> None:
    """Bind every thread of process ``pid`` to ``cores``; threads it starts later inherit it."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task.name), cores)


class _Supervisor(Multiprocess):
    """uvicorn's supervisor that also drops the live gauges of each worker that exited and, with
    ``pin``, binds each worker to its own share of the cores (again after every replacement)."""

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        metrics_dir: Path,
        pin: bool,
        engine: EngineProcess | None = None,
    ) -> None:
        super().__init__(config, sockets)
        self.metrics_dir, self.engine = metrics_dir, engine
        self.pids: set[int] = set()
        self.cores = sorted(os.sched_getaffinity(0)) if pin and hasattr(os, "sched_getaffinity") else []
        self.placed: dict[int, tuple[int, ...]] = {}

    def init_processes(self) -> None:
        super().init_processes()
        self._place()

    def handle_signals(self) -> None:  # SIGHUP restarts and SIGTTOU retires workers
        super().handle_signals()
        self._forget_exited()
        self._place()

    def keep_subprocess_alive(self) -> None:  # replaces dead workers (and the engine process)
        if self.engine is not None and (dead := self.engine.keep_alive()) is not None:
            mark_process_dead(dead, str(self.metrics_dir))
        super().keep_subprocess_alive()
        self._forget_exited()
        self._place()

    def _place(self) -> None:
        if len(self.cores) < 2 or len(self.processes) < 2:
            return
        groups = core_groups(self.cores, len(self.processes))
        for process, cores in zip(self.processes, groups, strict=True):
            pid = process.pid
            if pid is None or self.placed.get(pid) == tuple(cores):
                continue
            try:
                pin_process(pid, cores)
            except OSError as e:  # e.g. a sandbox that forbids it: serve unpinned
                log.warning("cannot bind worker %d to cores %s (%s): serving unbound", pid, cores, e)
                self.cores = []
                return
            self.placed[pid] = tuple(cores)
            log.info("worker %d bound to cores %s", pid, ",".join(map(str, cores)))

    def _forget_exited(self) -> None:
        pids = {p.pid for p in self.processes if p.pid is not None}
        for pid in self.pids - pids:
            mark_process_dead(pid, str(self.metrics_dir))
            self.placed.pop(pid, None)
        self.pids = pids


def serve_workers(
    settings: ServiceSettings,
    argv: list[str],
    sock: socket.socket,
    options: dict[str, Any],
    workers: int,
    shared_engine: bool = False,
) -> int:
    """Run ``workers`` server processes on ``sock`` until SIGTERM or SIGINT.

    Args:
        settings: the settings parsed from ``argv`` and the environment.
        argv: the command line the workers parse again.
        sock: the bound listening socket, shared by every worker.
        options: further ``uvicorn.Config`` arguments.
        workers: how many (``settings.workers`` resolved: ``service.topology.resolve_workers``).
        shared_engine: the workers are front ends of one engine process, started first and
            stopped after they have drained (``--engine-topology shared``, service/topology).

    Returns:
        The exit status: 0 after a drain, 3 when a worker failed to start.
    """
    metrics_dir = Path(tempfile.mkdtemp(prefix="anytime-metrics-"))
    choices_dir = Path(tempfile.mkdtemp(prefix="anytime-backends-"))
    control_dir = Path(tempfile.mkdtemp(prefix="anytime-control-"))
    names = (ARGV_ENV, METRICS_DIR_ENV, CHOICES_DIR_ENV, CONTROL_DIR_ENV, ENGINE_ADDRESS_ENV)
    saved = {name: os.environ.get(name) for name in names}
    os.environ[ARGV_ENV] = json.dumps(argv)
    os.environ[METRICS_DIR_ENV] = str(metrics_dir)
    os.environ[CHOICES_DIR_ENV] = str(choices_dir)
    os.environ[CONTROL_DIR_ENV] = str(control_dir)
    engine: EngineProcess | None = None
    try:
        if shared_engine:
            # Its socket goes in a private directory; it follows the repository as a worker does.
            engine = EngineProcess(argv, choices_dir, metrics_dir, control_dir)
            try:
                engine.start()
            except EngineStartError as e:
                log.error("%s", e)
                return 3
            os.environ[ENGINE_ADDRESS_ENV] = engine.address
        config = uvicorn.Config(
            WORKER_APP,
            factory=True,
            workers=workers,
            **options,
        )
        supervisor = _Supervisor(config, [sock], metrics_dir, settings.pin_workers, engine)
        supervisor.run()
    finally:
        if engine is not None:  # after the front ends drained: it answers what they waited for
            engine.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(choices_dir, ignore_errors=True)
        shutil.rmtree(control_dir, ignore_errors=True)
    # uvicorn's supervisor stops every worker when one fails to start (bad package, say).
    return 3 if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0
