"""What one process serves: every (model, version) with its state, and the swap between versions.

States follow Triton's model repository: ``LOADING`` (being built, takes no traffic), ``READY``,
``UNLOADING`` (takes no new requests, drains those it accepted), ``UNAVAILABLE`` (its load failed;
the reason is kept for the repository index). A new version takes traffic only once it is READY,
and a version leaves only after its in-flight requests are answered: ``apply`` loads first, swaps
under the lock, then drains and stops what is gone.

Requests that run inference hold a lease (:meth:`ModelRegistry.lease`), taken under the registry's
lock where the state is checked, so that no request can reach an engine after its drain began.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.errors import ModelNotFoundError, NotReadyError
from service.repository.served import ServedVersion
from service.repository.states import (
    RELOAD_FAILED,
    UNREADABLE,
    ApplyReport,
    Desired,
    ForwardedLoadError,
    IndexEntry,
    ModelState,
)

log = logging.getLogger("service.repository")

# (name, version, path) -> the started version; raises with a message that says why it cannot
Loader = Callable[[str, int, str], ServedVersion]
# the version to stop (its engine drained of leases first)
Releaser = Callable[[ServedVersion], None]


@dataclass
class _Slot:
    state: ModelState
    path: str
    served: ServedVersion | None = None
    reason: str = ""
    fingerprint: str = ""
    failed: str = ""  # the fingerprint whose load failed (not retried until it changes)


def _stop_engine(served: ServedVersion) -> None:
    served.loaded.engine.stop()


class ModelRegistry:
    """Thread-safe map of (name, version) -> slot; one per process (see the module docstring).

    Args:
        loader: builds and checks one version (validation, parity, warm-up) before it is served.
        fingerprint: a cheap summary of a package path's files; a READY version whose fingerprint
            changed is loaded again (a failed one too, on a poll).
        releaser: stops a drained version (default: stops its engine).
        drain_timeout_s: longest an unloading version waits for its in-flight requests.
    """

    def __init__(
        self,
        loader: Loader,
        fingerprint: Callable[[str], str] = lambda path: "",
        releaser: Releaser = _stop_engine,
        drain_timeout_s: float = 60.0,
        on_failure: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self._loader, self._fingerprint, self._releaser = loader, fingerprint, releaser
        self._on_failure = on_failure
        self.drain_timeout_s = drain_timeout_s
        self._lock = threading.RLock()
        self._apply_lock = threading.Lock()  # one apply at a time; resolve never waits on it
        self._slots: dict[str, dict[int, _Slot]] = {}

    # -- reading -----------------------------------------------------------------------------------
    def known(self, name: str) -> bool:
        """Whether ``name`` has a slot in any state (cheap: the metrics label requests by it)."""
        return name in self._slots

    def names(self) -> list[str]:
        """Every model name with a slot in any state, sorted."""
        with self._lock:
            return sorted(n for n, v in self._slots.items() if v)

    def readiness(self) -> dict[str, bool]:
        """Each model: whether it has a READY version. A model none of whose versions loaded is
        left out (the index reports it): one bad package must not take the server out of
        rotation."""
        with self._lock:
            return {
                n: any(s.state is ModelState.READY for s in slots.values())
                for n, slots in sorted(self._slots.items())
                if any(s.state is not ModelState.UNAVAILABLE for s in slots.values())
            }

    def ready_versions(self) -> list[ServedVersion]:
        """Every READY version: by name, newest first."""
        with self._lock:
            return [
                s.served
                for n in sorted(self._slots)
                for _, s in sorted(self._slots[n].items(), reverse=True)
                if s.state is ModelState.READY and s.served is not None
            ]

    def index(self) -> list[IndexEntry]:
        """Every slot, by name then version."""
        with self._lock:
            return [
                IndexEntry(n, v, s.state, s.reason)
                for n in sorted(self._slots)
                for v, s in sorted(self._slots[n].items())
            ]

    def resolve(self, name: str, version: int | None = None) -> ServedVersion:
        """The READY version ``version`` of ``name``, or its newest READY one when None.

        Raises:
            ModelNotFoundError (404): no such model, or no such version (or it failed to load).
            NotReadyError (503): it is loading, or unloading with nothing newer ready.
        """
        with self._lock:
            return self._resolve(name, version)

    def _resolve(self, name: str, version: int | None) -> ServedVersion:
        slots = self._slots.get(name)
        if not slots:
            served = self.names()
            raise ModelNotFoundError(
                f"model {name!r} is not served here; served: {served}", detail={"models": served}
            )
        if version is None:
            for _, newest in sorted(slots.items(), reverse=True):
                if newest.state is ModelState.READY and newest.served is not None:
                    return newest.served
            states = {v: s.state.value for v, s in slots.items()}
            if any(s.state is not ModelState.UNAVAILABLE for s in slots.values()):
                raise NotReadyError(f"model {name!r} has no ready version yet: {states}")
            reasons = "; ".join(f"version {v}: {s.reason}" for v, s in sorted(slots.items()))
            raise ModelNotFoundError(f"model {name!r} has no version that loaded: {reasons}")
        found = slots.get(version)
        if found is None:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version}; versions: {sorted(slots)}",
                detail={"versions": sorted(slots)},
            )
        if found.state is ModelState.READY and found.served is not None:
            return found.served
        if found.state is ModelState.UNAVAILABLE:
            raise ModelNotFoundError(f"model {name!r} version {version} is unavailable: {found.reason}")
        raise NotReadyError(f"model {name!r} version {version} is {found.state.value.lower()}")

    @contextmanager
    def lease(self, name: str, version: int | None = None) -> Iterator[ServedVersion]:
        """Resolve as :meth:`resolve` and hold the version until the block ends (its answer sent):
        an unload waits for every lease before it stops the engine."""
        with self._lock:
            served = self._resolve(name, version)
            served._acquire()
        try:
            yield served
        finally:
            served._release()

    # -- changing ----------------------------------------------------------------------------------
    def stamp(self, path: str) -> str:
        """The fingerprint of the package at ``path`` now (a note when it cannot be read)."""
        try:
            return self._fingerprint(path)
        except OSError as e:
            return f"{UNREADABLE}{e}"

    def apply(
        self,
        desired: Desired,
        retry: Collection[str] = (),
        before_unload: Callable[[bool], bool] | None = None,
    ) -> ApplyReport:
        """Make this process serve exactly ``desired`` (name -> version -> package path).

        New or changed versions load first (their slot LOADING, no traffic), then take traffic
        at once. Versions no longer desired drain and stop; but a model keeps its serving version
        while none of its desired versions loaded (a failed new version never leaves a model with
        nothing). ``retry``: models whose failed versions load again even if unchanged (a load
        request; a poll does not retry an unchanged failure). ``before_unload(leaving)``: called
        once the loads are done, with whether some version is about to leave; False keeps those
        versions for a later apply (the engine process waits for its front ends: control.py).
        """
        with self._apply_lock:
            report = ApplyReport()
            for name, versions in sorted(desired.items()):
                for version, path in sorted(versions.items()):
                    self._load_one(name, version, path, name in retry, report)
            with self._lock:
                gone = self._leaving(desired)  # only this apply changes slots: still so below
            if before_unload is not None and not before_unload(bool(gone)):
                return report
            with self._lock:
                for _, _, slot in gone:
                    if slot.state is ModelState.READY:
                        slot.state = ModelState.UNLOADING
            for name, version, slot in gone:
                if slot.served is not None:
                    self._release(slot.served)
                    report.unloaded.append((name, version))
                with self._lock:
                    if self._slots.get(name, {}).get(version) is slot:
                        del self._slots[name][version]
                        if not self._slots[name]:
                            del self._slots[name]
            return report

    def _leaving(self, desired: Desired) -> list[tuple[str, int, _Slot]]:
        """The slots ``desired`` no longer wants (call under the lock)."""
        gone = []
        for name, slots in self._slots.items():
            wanted = desired.get(name, {})
            keep_old = bool(wanted) and not any(
                slots[v].state is ModelState.READY for v in wanted if v in slots
            )
            for version, slot in slots.items():
                if version in wanted:
                    continue
                if keep_old and slot.state is ModelState.READY:
                    continue  # the serving version stays until a desired one is ready
                gone.append((name, version, slot))
        return gone

    def _load_one(
        self, name: str, version: int, path: str, retry_failed: bool, report: ApplyReport
    ) -> None:
        fingerprint = self.stamp(path)
        with self._lock:
            old = self._slots.get(name, {}).get(version)
            if old is not None and old.path == path and old.fingerprint == fingerprint:
                if old.state is ModelState.READY:
                    old.reason = old.failed = ""  # its files are back as served
                    return  # already served as it is: loading again is a no-op
                if old.state is ModelState.UNAVAILABLE and not retry_failed:
                    return
            if old is not None and old.failed == fingerprint and not retry_failed:
                return  # this very change failed to load before
            if old is not None and old.state is ModelState.READY and fingerprint.startswith(UNREADABLE):
                return  # its files are gone (an unmounted volume): keep serving what is loaded
            if old is None or old.state is not ModelState.READY:
                self._slots.setdefault(name, {})[version] = _Slot(ModelState.LOADING, path)
        log.info("loading model %s version %d from %s", name, version, path)
        t0 = time.monotonic()
        try:
            served = self._loader(name, version, path)
        except Exception as e:  # PackageError, BackendError, parity, ...: recorded, never raised
            reason = str(e) or type(e).__name__
            report.failed[(name, version)] = reason
            if isinstance(e, ForwardedLoadError):  # logged and counted where it failed
                log.info("model %s version %d is not served: %s", name, version, reason)
            else:
                log.error("model %s version %d failed to load from %s: %s", name, version, path, reason)
                if self._on_failure is not None:
                    self._on_failure(name, version, reason)
            with self._lock:
                slot = self._slots.get(name, {}).get(version)
                if slot is not None and slot.state is ModelState.READY:  # a reload keeps the old
                    slot.failed, slot.reason = fingerprint, f"{RELOAD_FAILED}{reason}"
                else:
                    self._slots.setdefault(name, {})[version] = _Slot(
                        ModelState.UNAVAILABLE,
                        path,
                        reason=reason,
                        fingerprint=fingerprint,
                        failed=fingerprint,
                    )
            return
        served.fingerprint = fingerprint
        with self._lock:
            previous = self._slots.get(name, {}).get(version)
            self._slots.setdefault(name, {})[version] = _Slot(
                ModelState.READY, path, served, fingerprint=fingerprint
            )
        log.info("model %s version %d ready in %.1f s", name, version, time.monotonic() - t0)
        report.loaded.append((name, version))
        if previous is not None and previous.served is not None:  # reloaded in place
            self._release(previous.served)

    def _release(self, served: ServedVersion) -> None:
        if not served.drain(self.drain_timeout_s):
            log.warning(
                "model %s version %d: %d requests still in flight after %.0f s; stopping it",
                served.name,
                served.version,
                served.in_flight,
                self.drain_timeout_s,
            )
        self._releaser(served)
        log.info("model %s version %d unloaded", served.name, served.version)

    def close(self) -> None:
        """Drain and stop every version (shutdown)."""
        self.apply({})
