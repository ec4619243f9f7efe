"""The control directory the worker processes of one server share: what to serve, and who has.

``desired.json`` holds a generation number and the desired map (name -> version -> path), written
whole (a temporary file renamed over it) under an ``fcntl.flock`` by whoever changes it: the poll
leader, or the worker that received a load or unload request. Each worker writes
``status-<pid>.json``: the generation it has applied and its registry's index. A change is done
when every live worker reports its generation. One process uses the same files in a temporary
directory, so there is no second code path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from service.repository.states import Desired, IndexEntry, ModelState

DESIRED = "desired.json"
# Worst state first: a version is READY in the merged index only when READY in every worker.
_SEVERITY = [ModelState.UNAVAILABLE, ModelState.LOADING, ModelState.UNLOADING, ModelState.READY]


@dataclass
class DesiredState:
    """What every worker should serve.

    Attributes:
        generation: bumped by every change; workers apply each generation once.
        models: name -> version -> package path.
        stamps: path -> fingerprint when it was chosen (a package rewritten in place reloads).
        errors: name -> what is wrong in its repository directory ("" : the repository itself).
        retry: models whose failed versions this generation loads again (a load request).
    """

    generation: int = 0
    models: Desired = field(default_factory=dict)
    stamps: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    retry: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DesiredState:
        models = {n: {int(v): p for v, p in vs.items()} for n, vs in raw["models"].items()}
        return cls(raw["generation"], models, raw["stamps"], raw["errors"], raw["retry"])


@dataclass(frozen=True)
class WorkerStatus:
    pid: int
    generation: int
    index: list[IndexEntry]


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


def _write_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ControlDirectory:
    """The files of the module docstring in ``path`` (made by the parent, or a temporary one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._leader: IO[str] | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock: read-modify-write of ``desired.json`` is one step."""
        with open(self.path / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read_desired(self) -> DesiredState | None:
        try:
            raw = json.loads((self.path / DESIRED).read_text())
        except FileNotFoundError:
            return None
        return DesiredState.from_json(raw)

    def desired_stamp(self) -> int:
        """Changes whenever ``desired.json`` is rewritten (cheap: one ``stat``)."""
        try:
            st = os.stat(self.path / DESIRED)
        except FileNotFoundError:
            return 0
        return st.st_ino ^ st.st_mtime_ns

    def write_desired(self, state: DesiredState) -> None:
        """Write ``state`` (call under :meth:`locked`)."""
        _write_atomic(self.path / DESIRED, asdict(state))

    def write_status(self, generation: int, index: list[IndexEntry]) -> None:
        status = {"generation": generation, "index": [asdict(e) for e in index]}
        _write_atomic(self.path / f"status-{os.getpid()}.json", status)

    def statuses(self) -> list[WorkerStatus]:
        """The status of every live worker (those of exited processes are removed)."""
        out = []
        for f in sorted(self.path.glob("status-*.json")):
            pid = int(f.stem.removeprefix("status-"))
            if not _alive(pid):
                f.unlink(missing_ok=True)
                continue
            try:
                raw = json.loads(f.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            index = [
                IndexEntry(e["name"], e["version"], ModelState(e["state"]), e["reason"])
                for e in raw["index"]
            ]
            out.append(WorkerStatus(pid, raw["generation"], index))
        return out

    def try_lead(self) -> bool:
        """Whether this process holds the leader lock (taken for its life on the first success)."""
        if self._leader is not None:
            return True
        f = open(self.path / "leader.lock", "a")  # noqa: SIM115 (held open: the lock is the file's)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._leader = f
        return True

    def close(self) -> None:
        if self._leader is not None:
            self._leader.close()
            self._leader = None
        (self.path / f"status-{os.getpid()}.json").unlink(missing_ok=True)
