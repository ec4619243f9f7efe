"""Who decides what is served, and how every worker process agrees (Triton's model control modes).

- ``none``: the ``models`` list and the repository, read once at start.
- ``poll``: the leader process (the holder of the control directory's leader lock) rescans the
  repository every ``repository_poll_secs`` and publishes what changed.
- ``explicit``: only load and unload requests change it (at start: everything, as Triton's
  ``--load-model=*``).

Every process runs a reconciler thread that applies each new generation of ``desired.json`` to
its own registry and reports its index (``shared.py``). A load or unload request answers once
every live worker reports the generation it wrote. Where one engine process serves front ends
(``--engine-topology shared``), it is one of these workers, and :class:`Ordering` puts its loads
before the front ends' and its unloads after them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import (
    ControlTimeoutError,
    ModelControlDisabledError,
    ModelLoadFailedError,
    ModelNotFoundError,
)
from service.repository.desired import ControlConfig, Mode, scanned_state
from service.repository.registry import ModelRegistry
from service.repository.scan import ModelConfig
from service.repository.shared import ControlDirectory, DesiredState, merge_indexes
from service.repository.states import ApplyReport, IndexEntry, ModelState

__all__ = ["ControlConfig", "Mode", "Ordering", "RepositoryControl"]

log = logging.getLogger("service.repository")

RECONCILE_S = 0.1  # how often a worker looks for a new generation (one stat call)


@dataclass(frozen=True)
class Ordering:
    """How a process's apply of each generation is ordered with the others' where one engine
    process serves front ends (``--engine-topology shared``, service/topology): a front end
    routes to a version only once the engine process has loaded it, and the engine process
    unloads a version only once no front end routes to it. None elsewhere: every worker loads
    its own engines.

    Attributes:
        wait_for_engine: a front end's: ``(generation, timeout_s)``, returns once the engine
            process has done that generation's loads (or could not say within the timeout).
        loaded: the engine process's: it has done ``generation``'s loads (front ends waiting
            for them go on).
    """

    wait_for_engine: Callable[[int, float], None] | None = None
    loaded: Callable[[int], None] | None = None


class RepositoryControl:
    """Keeps this process's registry at the shared desired state (see the module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        config: ControlConfig,
        directory: ControlDirectory,
        private: bool = False,
        ordering: Ordering | None = None,
    ) -> None:
        self.registry, self.config, self.directory = registry, config, directory
        self.private = private  # the directory is this process's own (removed at stop)
        self.ordering = ordering or Ordering()
        self.generation = -1
        self._seen_stamp = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_poll = 0.0

    # -- start and stop ----------------------------------------------------------------------------
    def start(self) -> ApplyReport:
        """Publish the start-up state (first process only), apply it, start the reconciler."""
        self.directory.write_status(self.generation, [])  # a load request waits for us from now on
        with self.directory.locked():
            state = self.directory.read_desired()
            if state is None:
                state = self._scanned(DesiredState())
                state.generation = 1
                self.directory.write_desired(state)
        report = self._apply(state)
        self._thread = threading.Thread(target=self._run, name="repository-control", daemon=True)
        self._thread.start()
        return report

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.directory.close()

    # -- what is desired ---------------------------------------------------------------------------
    def _scanned(
        self, base: DesiredState, only: str | None = None, override: ModelConfig | None = None
    ) -> DesiredState:
        return scanned_state(self.config, base, self.registry.stamp, only, override)

    def _publish(self, change: DesiredState) -> int:
        change.generation += 1
        self.directory.write_desired(change)
        return change.generation

    # -- the reconciler ----------------------------------------------------------------------------
    def _apply(self, state: DesiredState) -> ApplyReport:
        generation, loaded = state.generation, self.ordering.loaded
        if self.ordering.wait_for_engine is not None:
            self.ordering.wait_for_engine(generation, self.config.timeout_s)
        before_unload = None
        if loaded is not None:

            def before_unload(leaving: bool) -> bool:
                loaded(generation)
                return not leaving or self._front_ends_moved_on(generation)

        report = self.registry.apply(state.models, set(state.retry), before_unload)
        self.generation = generation
        self.directory.write_status(self.generation, self.registry.index())
        return report

    def _front_ends_moved_on(self, generation: int) -> bool:
        """The engine process's: whether the versions ``generation`` drops may stop now, i.e.
        every front end has applied it (none routes to them any more). False when a newer
        generation is out: the front ends wait for this process to load that one first, and its
        apply drops these versions too. Past ``timeout_s``: True, with a warning."""
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            behind = [
                s.pid
                for s in self.directory.statuses()
                if s.pid != os.getpid() and s.generation < generation
            ]
            if not behind:
                return True
            newest = self.directory.read_desired()
            if newest is not None and newest.generation > generation:
                return False
            if self._stop.is_set() or time.monotonic() > deadline:
                log.warning(
                    "front ends %s did not apply generation %d; unloading anyway", behind, generation
                )
                return True
            time.sleep(RECONCILE_S / 2)

    def _run(self) -> None:
        while not self._stop.wait(RECONCILE_S):
            try:
                self._tick()
            except Exception:  # never let the reconciler die: the next tick tries again
                log.exception("model repository: reconcile failed")

    def _tick(self) -> None:
        if self.config.mode == "poll" and self.directory.try_lead():
            now = time.monotonic()
            if now - self._last_poll >= self.config.poll_secs:
                self._last_poll = now
                self._poll()
        stamp = self.directory.desired_stamp()
        if stamp == self._seen_stamp:
            return
        state = self.directory.read_desired()
        self._seen_stamp = stamp
        if state is not None and state.generation != self.generation:
            self._apply(state)

    def _poll(self) -> None:
        with self.directory.locked():
            current = self.directory.read_desired() or DesiredState()
            fresh = self._scanned(current)
            same = (fresh.models, fresh.stamps, fresh.errors) == (
                current.models,
                current.stamps,
                current.errors,
            )
            if not same:
                generation = self._publish(fresh)
                log.info("model repository changed: generation %d", generation)

    # -- requests ----------------------------------------------------------------------------------
    def index(self) -> list[IndexEntry]:
        """Every version in every worker (merged), and each model directory's error."""
        state = self.directory.read_desired() or DesiredState()
        others = [s.index for s in self.directory.statuses() if s.generation >= 0]
        merged = merge_indexes(others or [self.registry.index()], state.models)
        where = state.errors.get("")
        if where:  # the repository is gone: say so beside every version it still serves
            merged = [
                IndexEntry(e.name, e.version, e.state, e.reason or f"{where}; serving what was loaded")
                if e.name not in self.config.models
                else e
                for e in merged
            ]
        extra = [
            IndexEntry(name, None, ModelState.UNAVAILABLE, reason)
            for name, reason in sorted(state.errors.items())
            if name
        ]
        return merged + extra

    def load(self, name: str, config: ModelConfig | None = None) -> None:
        """Load (or reload) ``name`` as the repository and its policy say; answers when every
        worker is done. Idempotent: loading what is served changes nothing.

        Raises:
            ModelControlDisabledError (400): not in explicit mode.
            ModelNotFoundError (404): no such model in the repository or the list.
            ModelLoadFailedError (400): a version failed; what served before still serves.
            ControlTimeoutError (504): some worker did not finish in ``timeout_s``.
        """
        self._check_mode()
        with self.directory.locked():
            current = self.directory.read_desired() or DesiredState()
            fresh = self._scanned(current, only=name, override=config)
            if name not in fresh.models:
                reason = fresh.errors.get(name) or fresh.errors.get("") or "no version found"
                where = self.config.repository or "the models list"
                raise ModelNotFoundError(f"model {name!r} cannot be loaded from {where}: {reason}")
            generation = self._publish(fresh)
        self._wait(generation)
        failed = [
            e for e in self.index() if e.name == name and e.version in fresh.models[name] and e.failed
        ]
        if failed:
            reasons = "; ".join(f"version {e.version}: {e.reason}" for e in failed)
            raise ModelLoadFailedError(f"failed to load model {name!r}: {reasons}")

    def unload(self, name: str) -> None:
        """Unload every version of ``name`` (each drains its accepted requests first)."""
        self._check_mode()
        with self.directory.locked():
            current = self.directory.read_desired() or DesiredState()
            if name not in current.models:
                loaded = sorted(current.models)
                raise ModelNotFoundError(f"model {name!r} is not loaded; loaded: {loaded}")
            del current.models[name]
            current.retry = []
            generation = self._publish(current)
        self._wait(generation)

    def _check_mode(self) -> None:
        if self.config.mode != "explicit":
            raise ModelControlDisabledError(
                f"model control mode is {self.config.mode!r}: loads and unloads need "
                "--model-control-mode explicit"
            )

    def _wait(self, generation: int) -> None:
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            behind = [s.pid for s in self.directory.statuses() if s.generation < generation]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ControlTimeoutError(
                    f"worker processes {behind} did not apply the change within "
                    f"{self.config.timeout_s} s; they keep trying",
                    detail={"pids": behind},
                )
            time.sleep(RECONCILE_S / 2)
