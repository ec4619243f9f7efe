"""A loaded version of a model, and the requests in flight on it (an unload waits for them)."""

from __future__ import annotations

import threading

from service.budget_times import BudgetTime
from service.engine import LoadedModel


class ServedVersion:
    """A loaded version of a model: its engine, its budgets in time, and its in-flight requests."""

    def __init__(
        self,
        name: str,
        version: int,
        loaded: LoadedModel,
        path: str,
        budget_times: dict[float, BudgetTime] | None = None,
        fingerprint: str = "",
    ) -> None:
        self.name, self.version, self.loaded, self.path = name, version, loaded, path
        self.budget_times = budget_times or {}
        self.fingerprint = fingerprint  # what its files looked like when loaded (reload on change)
        self._cond = threading.Condition()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _acquire(self) -> None:
        with self._cond:
            self._in_flight += 1

    def _release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until no request holds this version (True), or ``timeout`` seconds (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)
