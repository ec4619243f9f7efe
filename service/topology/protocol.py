"""The messages between front ends and the engine process: small tuples over a pipe.

Images never travel here (they are in the front end's shared-memory arena, ``arena.py``); a
message is a tuple whose first item is its kind. Front end -> engine:

- ``(HELLO,)`` once per connection; the answer is ``(CATALOG, {(name, version): ModelInfo})``
  (the engine process's READY versions); then
  ``(ARENA, shared-memory block name, float32 values per cell)``.
- ``(SUBMIT, request id, (name, version), first cell, n, plan, deadline, arrived)``; every
  submit gets
  exactly one final message back: ``ANSWER`` or ``ERROR``. ``deadline`` and ``arrived`` are
  ``time.monotonic()`` instants: one clock for every process of the machine (CLOCK_MONOTONIC).
- ``(CANCEL, request id, reason)``.
- ``(SYNC, generation, timeout)``, on a connection of its own (it may wait): the answer is
  ``(SYNCED, done, catalog, index)`` once the engine process has done that generation's loads of
  the model repository (``done``), or after ``timeout`` seconds (not ``done``); ``index``: its
  registry's rows (``IndexEntry``), which say why a version is not in the catalog.

Engine -> front end: ``(ANSWER, request id, results)``, ``(ERROR, request id, RemoteError)``,
``(PLAN, (name, version), default budget, guard shift)`` whenever what a request without options runs
under has changed (the SLO controller or the accuracy guard moved it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.package import Manifest
from service.engine.config import EngineConfig
from service.errors import (
    ClientDisconnectedError,
    DeadlineExceededError,
    EngineStoppedError,
    QueueFullError,
    ServiceError,
)

HELLO, CATALOG, ARENA, SUBMIT, CANCEL, ANSWER, ERROR, PLAN, SYNC, SYNCED = range(10)


@dataclass(frozen=True)
class ModelInfo:
    """What a front end needs of a model served by the engine process.

    Attributes:
        lines: ``[K]`` the stage cost model's ``(fixed, per_image)`` seconds, from the warm-up.
        default_budget: what a request without options runs under now (SLO controller's or the
            service's); ``shift``: the accuracy guard's per-exit threshold shifts.
    """

    manifest: Manifest
    root: str
    config: EngineConfig
    precision: str
    backend: str
    device: str
    ready: bool
    lines: list[tuple[float, float]]
    default_budget: float | None
    shift: tuple[float, ...]


@dataclass(frozen=True)
class RemoteError:
    """An engine-side error as data (domain exceptions do not all pickle with their fields)."""

    kind: str
    message: str
    retry_after_s: int = 0


_KINDS: dict[str, type[ServiceError]] = {
    "queue_full": QueueFullError,
    "shutting_down": EngineStoppedError,
    "deadline": DeadlineExceededError,
    "disconnected": ClientDisconnectedError,
}


def to_remote(exc: BaseException) -> RemoteError:
    if isinstance(exc, QueueFullError):
        return RemoteError("queue_full", exc.message, int(exc.headers.get("Retry-After", "1")))
    if isinstance(exc, EngineStoppedError):
        return RemoteError("shutting_down", exc.message)
    return RemoteError("internal", f"{type(exc).__name__}: {exc}")


def from_remote(err: RemoteError) -> BaseException:
    """The exception a front end raises for ``err`` (an unknown kind: a plain RuntimeError)."""
    if err.kind == "queue_full":
        return QueueFullError(err.message, retry_after_s=err.retry_after_s)
    cls = _KINDS.get(err.kind)
    return cls(err.message) if cls is not None else RuntimeError(err.message)


Message = tuple[Any, ...]
Key = tuple[str, int]
"""A served version: (model name, version)."""
