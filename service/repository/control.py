"""Who decides what is served, and how every worker process agrees (Triton's model control modes).

- ``none``: the ``models`` list and the repository, read once at start.
- ``poll``: the leader process (the holder of the control directory's leader lock) rescans the
  repository every ``repository_poll_secs`` and publishes what changed.
- ``explicit``: only load and unload requests change it (at start: everything, as Triton's
  ``--load-model=*``).

Every process runs a reconciler thread that applies each new generation of ``desired.json`` to
its own registry and reports its index (``shared.py``). A load or unload request answers once
every live worker reports the generation it wrote.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.errors import (
    ControlTimeoutError,
    ModelControlDisabledError,
    ModelLoadFailedError,
    ModelNotFoundError,
)
from service.repository.registry import ApplyReport, Desired, IndexEntry, ModelRegistry, ModelState
from service.repository.scan import ModelConfig, Scan, scan_repository
from service.repository.shared import ControlDirectory, DesiredState

log = logging.getLogger("service.repository")

Mode = Literal["none", "poll", "explicit"]
RECONCILE_S = 0.1  # how often a worker looks for a new generation (one stat call)
# Worst state first: a version is READY in the merged index only when READY in every worker.
_SEVERITY = [ModelState.UNAVAILABLE, ModelState.LOADING, ModelState.UNLOADING, ModelState.READY]


@dataclass(frozen=True)
class ControlConfig:
    mode: Mode
    repository: Path | None
    models: Desired  # the ``models`` list, each package one version of its name
    poll_secs: float
    timeout_s: float


def merge_indexes(indexes: list[list[IndexEntry]], desired: Desired) -> list[IndexEntry]:
    """One index from every worker's: the worst state of each version; a version one worker does
    not have yet is LOADING there if desired, else UNLOADING."""
    keys = sorted({(e.name, e.version) for idx in indexes for e in idx}, key=lambda k: (k[0], k[1] or 0))
    out = []
    for name, version in keys:
        states, reasons = [], []
        for idx in indexes:
            entry = next((e for e in idx if e.name == name and e.version == version), None)
            if entry is None:
                wanted = version is not None and version in desired.get(name, {})
                states.append(ModelState.LOADING if wanted else ModelState.UNLOADING)
                continue
            states.append(entry.state)
            if entry.reason and entry.reason not in reasons:
                reasons.append(entry.reason)
        worst = min(states, key=_SEVERITY.index)
        out.append(IndexEntry(name, version, worst, "; ".join(reasons)))
    return out


class RepositoryControl:
    """Keeps this process's registry at the shared desired state (see the module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        config: ControlConfig,
        directory: ControlDirectory,
        private: bool = False,
    ) -> None:
        self.registry, self.config, self.directory = registry, config, directory
        self.private = private  # the directory is this process's own (removed at stop)
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
    def _scan(self) -> Scan | None:
        return scan_repository(self.config.repository) if self.config.repository else None

    def _scanned(
        self, base: DesiredState, only: str | None = None, override: ModelConfig | None = None
    ) -> DesiredState:
        """``base`` updated from the list and a fresh scan: every model, or ``only`` that one.

        What cannot be read now keeps what ``base`` had, stamps included (no reload): a model
        whose directory is unreadable, or every model when the repository itself is (the
        serving versions stay)."""
        scan = self._scan()
        found: Desired = dict(self.config.models)
        kept: set[str] = set()
        errors: dict[str, str] = {}
        if scan is not None:
            errors = scan.errors()
            overrides = {only: override} if only and override else None
            for name, versions in scan.desired(overrides).items():
                if name in self.config.models:
                    errors[name] = f"{name!r} is both in the models list and the repository"
                else:
                    found[name] = versions
            unreadable = {n for n, m in scan.models.items() if not m.versions and m.errors}
            if scan.error:
                unreadable = set(base.models) - set(self.config.models)
            kept = {n for n in unreadable if n in base.models}
            found.update({n: base.models[n] for n in kept})
        models = found
        if only is not None:  # a load request changes that model only
            models = {n: v for n, v in base.models.items() if n != only}
            if only in found:
                models[only] = found[only]
            errors = {
                **{n: e for n, e in base.errors.items() if n != only},
                **{n: e for n, e in errors.items() if n in (only, "")},
            }
        stamps = {
            p: base.stamps.get(p, "") if n in kept else self.registry.stamp(p)
            for n, vs in models.items()
            for p in vs.values()
        }
        return DesiredState(base.generation, models, stamps, errors, [only] if only else [])

    def _publish(self, change: DesiredState) -> int:
        change.generation += 1
        self.directory.write_desired(change)
        return change.generation

    # -- the reconciler ----------------------------------------------------------------------------
    def _apply(self, state: DesiredState) -> ApplyReport:
        report = self.registry.apply(state.models, retry=set(state.retry))
        self.generation = state.generation
        self.directory.write_status(self.generation, self.registry.index())
        return report

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
            e
            for e in self.index()
            if e.name == name and e.version in fresh.models[name] and e.state is ModelState.UNAVAILABLE
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
