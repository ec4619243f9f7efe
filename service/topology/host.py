"""The engine process's side: serve this process's engines to every front end that connects.

One thread per front-end connection reads its messages (``protocol.py``) and submits to the
engines; the answers go back from the engine worker thread that settles a request's future
(one send, no further hop). A front end that goes away has its queued work cancelled
(``disconnected``), as a client that hangs up does within one process.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from multiprocessing.connection import Connection, Listener

from service.engine import ImageResult, LoadedModel, ModelEngine, RequestWork
from service.errors import ServiceError
from service.repository import ModelRegistry
from service.topology.arena import ArenaReader
from service.topology.protocol import (
    ANSWER,
    ARENA,
    CANCEL,
    CATALOG,
    ERROR,
    HELLO,
    PLAN,
    SUBMIT,
    SYNC,
    SYNCED,
    Key,
    Message,
    ModelInfo,
    RemoteError,
    to_remote,
)

log = logging.getLogger("service.topology")


def plan_inputs(engine: ModelEngine) -> tuple[float | None, tuple[float, ...]]:
    """What the plan of a request without options depends on now: the default budget (the SLO
    controller's, else the service's) and the accuracy guard's shifts (``ModelEngine.plan``)."""
    return engine.default_budget(), engine.guard.shift


def model_info(loaded: LoadedModel) -> ModelInfo:
    e, costs = loaded.engine, loaded.engine.costs
    default, shift = plan_inputs(e)
    return ModelInfo(
        manifest=loaded.package.manifest,
        root=str(loaded.package.root),
        config=e.config,
        precision=loaded.precision,
        backend=e.backend.name,
        device=e.backend.device,
        ready=e.ready,
        lines=[(costs.fixed(k), costs.estimate(k, 1) - costs.fixed(k)) for k in range(e.num_exits)],
        default_budget=default,
        shift=shift,
    )


class LoadProgress:
    """The newest generation of the model repository whose loads this engine process has done
    (control.py's ``Ordering.loaded``); -1: none yet."""

    def __init__(self, generation: int = -1) -> None:
        self.generation = generation
        self._cond = threading.Condition()

    def advance(self, generation: int) -> None:
        with self._cond:
            self.generation = max(self.generation, generation)
            self._cond.notify_all()

    def wait(self, generation: int, timeout: float | None) -> bool:
        """Until ``generation``'s loads are done (True) or ``timeout`` seconds passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.generation >= generation, timeout)


class _FrontEnd:
    """One connected front end: its pipe (sends serialised by a lock), arena and open requests."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.works: dict[int, tuple[ModelEngine, RequestWork]] = {}
        self.reader: ArenaReader | None = None

    def send(self, msg: Message) -> None:
        try:
            with self.lock:
                self.conn.send(msg)
        except (OSError, ValueError):  # gone meanwhile: its reader thread cleans up
            pass


class EngineHost:
    """Accepts front ends on ``listener`` and serves them the READY versions of ``registry``
    (this process's, the only one that loads engines).

    ``progress``: how far this process has loaded the repository's generations; a front end's
    HELLO waits for the first (the catalog is complete then), a SYNC for the one it names.
    Default: done (a registry filled before the host starts).
    """

    def __init__(
        self, registry: ModelRegistry, listener: Listener, progress: LoadProgress | None = None
    ) -> None:
        self.registry, self.listener = registry, listener
        self.progress = progress or LoadProgress(0)
        self._front_ends: set[_FrontEnd] = set()
        self._lock = threading.Lock()
        self._published: dict[Key, tuple[float | None, tuple[float, ...]]] = {}

    def catalog(self) -> dict[Key, ModelInfo]:
        return {(v.name, v.version): model_info(v.loaded) for v in self.registry.ready_versions()}

    def accept_forever(self) -> None:
        """Accept connections until the listener is closed (each served by its own thread)."""
        while True:
            try:
                conn = self.listener.accept()
            except OSError:  # closed: the process is stopping
                return
            fe = _FrontEnd(conn)
            threading.Thread(target=self._serve, args=(fe,), name="front-end", daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _serve(self, fe: _FrontEnd) -> None:
        with self._lock:
            self._front_ends.add(fe)
        try:
            while True:
                self._handle(fe, fe.conn.recv())
        except (EOFError, OSError):
            pass
        finally:
            with self._lock:
                self._front_ends.discard(fe)
            for engine, work in list(fe.works.values()):
                engine.cancel(work, "disconnected")
            if fe.reader is not None:
                fe.reader.close()
            fe.conn.close()

    def _handle(self, fe: _FrontEnd, msg: Message) -> None:
        kind = msg[0]
        if kind == SUBMIT:
            _, rid, key, first, n, plan, deadline, arrived = msg
            assert fe.reader is not None  # a front end names its arena first
            try:
                engine = self.registry.resolve(*key).loaded.engine
                h, w = engine.manifest.preprocessing.input_size
                work = engine.submit(fe.reader.get(first, n, (3, h, w)), plan, deadline, arrived)
            except ServiceError as e:  # 429 / 503 / 404: answered at once
                fe.send((ERROR, rid, to_remote(e)))
                return
            fe.works[rid] = (engine, work)
            work.future.add_done_callback(lambda f: self._settled(fe, rid, key, engine, work, f))
        elif kind == CANCEL:
            _, rid, reason = msg
            entry = fe.works.get(rid)
            if entry is not None:
                entry[0].cancel(entry[1], reason)
        elif kind == HELLO:
            self.progress.wait(0, None)
            fe.send((CATALOG, self.catalog()))
        elif kind == SYNC:  # on a connection of its own: waiting here holds up no request
            _, generation, timeout = msg
            done = self.progress.wait(generation, timeout)
            fe.send((SYNCED, done, self.catalog(), self.registry.index()))
        elif kind == ARENA:
            _, arena, cell_floats = msg
            fe.reader = ArenaReader(arena, cell_floats)
        else:
            log.error("unknown message kind %r from a front end", kind)

    def _settled(
        self,
        fe: _FrontEnd,
        rid: int,
        key: Key,
        engine: ModelEngine,
        work: RequestWork,
        f: cf.Future[list[ImageResult]],
    ) -> None:
        """The one final message of a request (runs in the thread that settled its future)."""
        fe.works.pop(rid, None)
        if f.cancelled():
            fe.send((ERROR, rid, RemoteError(work.cancel_reason or "cancelled", "cancelled")))
        elif (exc := f.exception()) is not None:
            fe.send((ERROR, rid, to_remote(exc)))
        else:
            fe.send((ANSWER, rid, f.result()))
        self._publish(key, engine)

    def _publish(self, key: Key, engine: ModelEngine) -> None:
        """Tell every front end when a request without options would run under another plan."""
        now = plan_inputs(engine)
        if now == self._published.setdefault(key, now):
            return
        self._published[key] = now
        with self._lock:
            front_ends = list(self._front_ends)
        for fe in front_ends:
            fe.send((PLAN, key, *now))
