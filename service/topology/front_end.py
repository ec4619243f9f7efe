"""A front end's model repository: its registry serves the engine process's versions.

The front end runs the same repository control as every worker process (the control directory:
service/repository/control.py), with two differences. Its loader builds no engine: a version is
an :class:`EngineClient` of the engine process's (``remote_version``). And before it applies a
generation it waits until the engine process has done that generation's loads (``SYNC``,
protocol.py), so that a load request answers only once the engine process serves the version,
checked and warm, and a version that failed there is reported here with the engine process's
reason (logged and counted there, once).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from models.multi_exit import MultiExitNet
from models.package import ModelPackage
from service.engine import LoadedModel, ModelEngine
from service.metrics import ServiceMetrics
from service.repository import IndexEntry, ServedVersion
from service.repository.control import Ordering
from service.repository.loading import time_budgets
from service.repository.states import RELOAD_FAILED, ForwardedLoadError
from service.settings import ServiceSettings
from service.topology.client import EngineClient, EngineLink, connect
from service.topology.protocol import SYNC, SYNCED, Key, ModelInfo

log = logging.getLogger("service.topology")


def remote_version(link: EngineLink, key: Key, metrics: ServiceMetrics) -> ServedVersion:
    """The engine process's version ``key`` as this front end serves it: the package's manifest
    (front ends hold no weights; serving reads only the manifest) and an :class:`EngineClient`.

    Raises:
        ForwardedLoadError: the engine process serves no such version.
    """
    info = link.catalog.get(key)
    if info is None:
        served = sorted(f"{n} v{v}" for n, v in link.catalog)
        raise ForwardedLoadError(f"the engine process does not serve {key[0]} v{key[1]}: {served}")
    package = ModelPackage(Path(info.root), info.manifest, cast(MultiExitNet, None))
    engine = cast(ModelEngine, EngineClient(link, key))  # the surface serving.py uses
    loaded = LoadedModel(package, engine, info.precision)
    return ServedVersion(key[0], key[1], loaded, info.root, time_budgets(loaded, metrics))


class FrontEnd:
    """This process's side of the engine process at ``address``: :meth:`load` is its registry's
    loader, :meth:`ordering` its repository control's.

    One :class:`EngineLink` serves every version; the link closes with its last client (every
    model unloaded, or shutdown), and the next load opens another.
    """

    def __init__(self, address: str, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.address, self.metrics = address, metrics
        # Room for a full engine queue and a largest request beyond it: the engine's bounded
        # queue, not this arena, is what answers 429 in normal overload.
        self.cells = 2 * settings.batching.queue_size + settings.limits.max_images_per_request
        self.link: EngineLink | None = None
        # What the engine process served after the generation being applied: catalog and index.
        self._synced: tuple[dict[Key, ModelInfo], dict[Key, IndexEntry]] | None = None

    def ordering(self) -> Ordering:
        return Ordering(wait_for_engine=self.wait_for_engine)

    def _open_link(self) -> EngineLink:
        if self.link is None or self.link.closed:
            self.link = EngineLink(self.address, self.cells)
            self.link.connect()
        return self.link

    def load(self, name: str, version: int, path: str) -> ServedVersion:
        """A client of the engine process's ``name`` version ``version`` (``path``: its package,
        loaded there).

        Raises:
            ForwardedLoadError: the engine process failed to load it (its reason), or serves it
                but failed to load its rewritten files (it keeps serving the old ones, and so
                does this front end).
        """
        link, key = self._open_link(), (name, version)
        if self._synced is not None:
            catalog, index = self._synced
            entry = index.get(key)
            if entry is not None and entry.failed:
                raise ForwardedLoadError(entry.reason.removeprefix(RELOAD_FAILED))
            if key not in catalog:
                state = entry.state.value.lower() if entry is not None else "not loaded"
                raise ForwardedLoadError(
                    f"the engine process does not serve {name} v{version} ({state})"
                )
            link.catalog[key] = catalog[key]
        return remote_version(link, key, self.metrics)

    def wait_for_engine(self, generation: int, timeout: float) -> None:
        """Until the engine process has done ``generation``'s loads (``SYNC``), at most
        ``timeout`` seconds; then :meth:`load` serves what it serves. An engine process that
        cannot be asked (it is restarting) leaves the catalog its link last read."""
        try:
            with connect(self.address, timeout) as conn:
                conn.send((SYNC, generation, timeout))
                if not conn.poll(timeout + 5.0):
                    raise TimeoutError(f"no answer in {timeout + 5.0:.0f} s")
                kind, done, catalog, index = conn.recv()
        except (OSError, EOFError) as e:
            log.warning("the engine process did not answer for generation %d (%s)", generation, e)
            self._synced = None
            return
        if kind != SYNCED:
            raise RuntimeError(f"the engine process answered SYNC with message kind {kind}")
        if not done:
            log.warning("the engine process has not loaded generation %d in %.0f s", generation, timeout)
        entries = {(e.name, e.version): e for e in index if e.version is not None}
        self._synced = (catalog, entries)
