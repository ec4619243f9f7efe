"""The engine process: started, watched, restarted and stopped by the server's parent process.

``--engine-topology shared``: the parent starts one engine process (it loads every model and
warms it up) before the front ends, and stops it after they have drained. The engine process
ignores SIGINT and SIGTERM (a Ctrl-C or a group-wide SIGTERM reaches every process at once, and
the front ends still need it to answer what they are draining); it stops when the parent says
so, or when the parent is gone (its end of the control pipe closes). One that dies is reported
and replaced; the front ends reconnect by themselves (``client.py``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
from multiprocessing.connection import Connection, Listener
from multiprocessing.process import BaseProcess
from pathlib import Path

log = logging.getLogger("service.topology")
READY = "ready"


class EngineStartError(RuntimeError):
    """The engine process exited or did not report ready (the message says which)."""


def engine_main(
    argv: list[str], address: str, metrics_dir: str, control_dir: str, control: Connection
) -> None:
    """The engine process: load the models, serve front ends on ``address`` until told to stop;
    it follows the model repository as one of the workers of ``control_dir`` (the front ends
    are the others), loading each generation before they serve it and unloading after."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from service.engine.factory import freeze_startup_heap
    from service.logs import configure_logging
    from service.metrics import ServiceMetrics
    from service.repository.control import Ordering
    from service.repository.startup import build_registry, start_control, stop_control
    from service.settings import ServiceSettings
    from service.topology.host import EngineHost, LoadProgress

    settings = ServiceSettings(_cli_parse_args=argv)
    configure_logging(settings.log_level, settings.json_logs)
    registry = build_registry(settings, ServiceMetrics(Path(metrics_dir)), None)
    progress = LoadProgress()
    with Listener(address, family="AF_UNIX") as listener:
        # Listening before the loads: front ends that wait for a generation (a restarted engine
        # process's) are answered once it is loaded; a HELLO once the first one is.
        host = EngineHost(registry, listener, progress)
        threading.Thread(target=host.accept_forever, name="accept", daemon=True).start()
        # The front ends' registries hold clients of this registry's versions.
        ordering = Ordering(loaded=progress.advance)
        repository = start_control(settings, registry, Path(control_dir), ordering)
        freeze_startup_heap()
        names = ", ".join(registry.names()) or "no models"
        log.info("engine process %d ready: %s", os.getpid(), names)
        control.send(READY)
        try:
            control.recv()  # "stop", or EOFError when the parent is gone
        except EOFError:
            log.warning("engine process: the server's parent process is gone; stopping")
        log.info("engine process: draining the engines' queues")
        stop_control(repository)


class EngineProcess:
    """The parent's handle on the engine process (spawned: a fresh interpreter)."""

    def __init__(self, argv: list[str], directory: Path, metrics_dir: Path, control_dir: Path) -> None:
        self.argv, self.metrics_dir, self.control_dir = argv, metrics_dir, control_dir
        self.address = str(directory / "engine.sock")
        self.process: BaseProcess | None = None
        self._control: Connection | None = None
        self.stopping = False

    def start(self, wait_s: float | None = 600.0) -> None:
        """Spawn the engine process; with ``wait_s``, wait until it is ready.

        Raises:
            EngineStartError: it exited first, or was not ready within ``wait_s``.
        """
        if os.path.exists(self.address):
            os.unlink(self.address)  # a dead predecessor's socket
        ctx = mp.get_context("spawn")
        ours, theirs = ctx.Pipe()
        self.process = ctx.Process(
            target=engine_main,
            args=(self.argv, self.address, str(self.metrics_dir), str(self.control_dir), theirs),
            name="anytime-engine",
            daemon=True,
        )
        self.process.start()
        theirs.close()
        self._control = ours
        log.info("engine process %d started", self.process.pid)
        if wait_s is None:
            return
        try:
            ready = ours.poll(wait_s) and ours.recv() == READY
        except EOFError:
            ready = False
        if not ready:
            code = self.process.exitcode
            self.stop(5.0)
            raise EngineStartError(
                f"the engine process exited with {code} before it was ready"
                if code is not None
                else f"the engine process was not ready after {wait_s:.0f} s"
            )

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def keep_alive(self) -> int | None:
        """Replace a dead engine process (reported); returns the dead one's pid, else None."""
        p = self.process
        if self.stopping or p is None or p.is_alive():
            return None
        log.error("engine process %d exited with %s; starting another", p.pid, p.exitcode)
        self.start(wait_s=None)  # the front ends reconnect once it listens
        return p.pid

    def stop(self, timeout: float = 60.0) -> None:
        """Tell it to drain and stop; killed if it has not within ``timeout`` seconds."""
        self.stopping = True
        if self._control is not None:
            with contextlib.suppress(OSError):  # it died meanwhile
                self._control.send("stop")
            self._control.close()
            self._control = None
        if self.process is not None:
            self.process.join(timeout)
            if self.process.is_alive():
                pid = self.process.pid
                log.error("engine process %d did not stop in %.0f s; killing it", pid, timeout)
                self.process.kill()
                self.process.join(5.0)
