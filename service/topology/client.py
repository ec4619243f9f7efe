"""The front end's side: ``EngineClient``, a ``ModelEngine`` for serving.py whose engine runs in
the engine process, and ``EngineLink``, the one connection all of a front end's clients share.

A submit writes the request's preprocessed batch into this process's shared-memory arena and
sends ``(first cell, n)``; a reader thread settles each request's future from the engine's one
final message (``protocol.py``). Plans are resolved here, by the same ``policy.resolve_plan``
the engine uses, from the default budget and guard shifts the engine process publishes.

If the engine process dies, every open request fails with 503 (the engine is gone), the models
report not ready (503 on new requests), and the link reconnects once a new engine process
listens (the parent starts one: ``process.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Client, Connection

from torch import Tensor

from service.engine import ImageResult, RequestWork
from service.engine.costs import StageCosts
from service.errors import EngineStoppedError, QueueFullError
from service.policy import ExitPlan, resolve_plan
from service.topology.arena import Arena, ArenaFullError
from service.topology.protocol import (
    ANSWER,
    ARENA,
    CANCEL,
    CATALOG,
    ERROR,
    HELLO,
    PLAN,
    SUBMIT,
    Key,
    Message,
    ModelInfo,
    RemoteError,
    from_remote,
)

log = logging.getLogger("service.topology")
RECONNECT_S = 0.2


def connect(address: str, timeout: float) -> Connection:
    """A connection to the engine process at ``address``, waiting up to ``timeout`` s for it to
    listen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(address, family="AF_UNIX")
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(RECONNECT_S)


class EngineLink:
    """This front end's connection to the engine process (module docstring).

    Args:
        cells: images the arena holds at once (beyond them, requests get 429); a cell holds one
            preprocessed image of the largest model.
    """

    def __init__(self, address: str, cells: int) -> None:
        self.address, self.cells = address, cells
        self.arena: Arena | None = None  # sized from the first catalog
        self.catalog: dict[Key, ModelInfo] = {}
        self.connected = False
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._open: dict[int, tuple[RequestWork, int, int]] = {}  # id -> work, first cell, n
        self._rid: dict[RequestWork, int] = {}
        self._ids = itertools.count()
        self._closing = False
        self.users = 0  # clients not stopped yet; the last one's stop closes the link
        self.started = False  # connect() ran: the reader thread reconnects from then on

    def connect(self, timeout: float = 600.0) -> dict[Key, ModelInfo]:
        """Connect (waiting up to ``timeout`` for the engine to listen), read its catalog, and
        start the reader thread."""
        self._hello(connect(self.address, timeout))
        threading.Thread(target=self._read, name="engine-link", daemon=True).start()
        self.started = True
        return self.catalog

    def _hello(self, conn: Connection) -> None:
        conn.send((HELLO,))
        kind, catalog = conn.recv()
        if kind != CATALOG:
            raise OSError(f"the engine process answered HELLO with message kind {kind}")
        if self.arena is None:
            sizes = [i.manifest.preprocessing.input_size for i in catalog.values()]
            self.arena = Arena(self.cells, max((3 * h * w for h, w in sizes), default=1))
        conn.send((ARENA, self.arena.name, self.arena.cell_floats))
        self.catalog.update(catalog)
        self._conn, self.connected = conn, True

    def submit(
        self, key: Key, images: Tensor, plan: ExitPlan, deadline: float, arrived: float
    ) -> RequestWork:
        n = images.shape[0]
        work = RequestWork(n=n, deadline=deadline)
        work.arrived = arrived
        arena, model = self.arena, key[0]
        if not self.connected or arena is None:
            raise EngineStoppedError(f"model {model!r}: the engine process is restarting")
        try:
            first = arena.put(images)
        except ArenaFullError:
            raise QueueFullError(
                f"model {model!r}: this front end has {arena.in_use()} images in flight",
                retry_after_s=self.catalog[key].config.retry_after_s,
            ) from None
        rid = next(self._ids)
        self._open[rid] = (work, first, n)
        self._rid[work] = rid
        if not self._send((SUBMIT, rid, key, first, n, plan, deadline, arrived)):
            self._settle(rid, RemoteError("shutting_down", f"model {model!r}: the engine is gone"))
        return work

    def cancel(self, work: RequestWork, reason: str) -> None:
        rid = self._rid.get(work)
        if rid is not None:
            self._send((CANCEL, rid, reason))

    def _send(self, msg: Message) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            with self._send_lock:
                conn.send(msg)
            return True
        except (OSError, ValueError):
            return False

    def _settle(self, rid: int, outcome: list[ImageResult] | RemoteError) -> None:
        entry = self._open.pop(rid, None)
        if entry is None:
            return
        work, first, n = entry
        self._rid.pop(work, None)
        if self.arena is not None:
            self.arena.free(first, n)
        with contextlib.suppress(cf.InvalidStateError):  # cancelled here meanwhile
            if isinstance(outcome, RemoteError):
                work.future.set_exception(from_remote(outcome))
            else:
                work.future.set_result(outcome)

    def _read(self) -> None:
        while not self._closing:
            conn = self._conn
            assert conn is not None
            try:
                while True:
                    msg = conn.recv()
                    if msg[0] in (ANSWER, ERROR):
                        self._settle(msg[1], msg[2])
                    elif msg[0] == PLAN:
                        _, key, default, shift = msg
                        info = self.catalog.get(key)  # None: loaded since, not served here yet
                        if info is not None:
                            self.catalog[key] = replace(info, default_budget=default, shift=shift)
            except (EOFError, OSError):
                pass
            self._lost()
            if not self._closing:
                self._reconnect()

    def _lost(self) -> None:
        """The engine process is gone: fail what it held (503), refuse new work until back."""
        self.connected = False
        if self._conn is not None:
            self._conn.close()
        if self._closing:
            return
        gone = RemoteError("shutting_down", "the engine process stopped before answering")
        n = len(self._open)
        for rid in list(self._open):
            self._settle(rid, gone)
        log.error("lost the engine process: %d open requests failed (503); reconnecting", n)

    def _reconnect(self) -> None:
        while not self._closing:
            try:
                self._hello(connect(self.address, RECONNECT_S))
                log.info("reconnected to the engine process")
                return
            except (OSError, EOFError):
                time.sleep(RECONNECT_S)

    @property
    def closed(self) -> bool:
        return self._closing

    def release(self) -> None:
        """One client stopped; the last one closes the link (a later load opens another)."""
        self.users -= 1
        if self.users <= 0:
            self.close()

    def close(self) -> None:
        self._closing = True
        self.connected = False
        if self._conn is not None:
            self._conn.close()
        if self.arena is not None:
            self.arena.close()


class EngineClient:
    """``ModelEngine``'s surface for serving.py and the routes, over an :class:`EngineLink`."""

    def __init__(self, link: EngineLink, key: Key) -> None:
        self.link, self.key, self.name = link, key, key[0]
        info = link.catalog[key]
        self.manifest, self.config = info.manifest, info.config
        self.num_exits = info.manifest.num_exits
        self.costs = StageCosts(self.num_exits)
        big = max(self.config.max_batch_size, 2)
        for k, (fixed, per_image) in enumerate(info.lines):  # two points fix the engine's line
            self.costs.observe(k, 1, fixed + per_image)
            self.costs.observe(k, big, fixed + per_image * big)
        self._stopped = False
        link.users += 1

    @property
    def ready(self) -> bool:
        return not self._stopped and self.link.connected and self.link.catalog[self.key].ready

    @property
    def queue_depth(self) -> int:
        """Not known here (the engine process's ``anytime_queue_depth`` gauge has it)."""
        return 0

    @property
    def flops(self) -> list[int]:
        return [e.flops for e in self.manifest.exits]

    def plan(
        self, budget: float | None = None, threshold: float | None = None, max_exit: int | None = None
    ) -> ExitPlan:
        """``ModelEngine.plan``, from what the engine process last published."""
        info = self.link.catalog[self.key]
        return resolve_plan(
            self.manifest,
            budget=budget,
            threshold=threshold,
            max_exit=max_exit,
            default_budget=info.default_budget,
            shift=info.shift,
        )

    def submit(
        self,
        images: Tensor,
        plan: ExitPlan,
        deadline: float,
        arrived: float | None = None,
        trace: object | None = None,
    ) -> RequestWork:
        """``ModelEngine.submit``; 429 and 503 arrive through the work's future, or at once when
        this front end cannot hand the images over. ``trace`` is not carried to the engine
        process: a front end's trace holds decode and the wait for the answer, not stage runs."""
        if self._stopped:
            raise EngineStoppedError(f"model {self.name!r} is shutting down")
        now = time.monotonic() if arrived is None else arrived
        return self.link.submit(self.key, images.float().contiguous(), plan, deadline, now)

    def cancel(self, work: RequestWork, reason: str) -> None:
        if work.cancel_reason is None and not work.future.done():
            work.cancel_reason = reason
            # Cancelled here first: the engine's answer to the cancel must not settle it.
            work.future.cancel()
            self.link.cancel(work, reason)  # the engine process counts the rejection
        work.future.cancel()

    def stop(self, timeout: float = 30.0) -> None:
        """This front end submits no more (the engine process drains and stops on its own)."""
        if not self._stopped:
            self._stopped = True
            self.link.release()
