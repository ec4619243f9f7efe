"""``auto``'s backend choice, made once per package for all the worker processes of one server.

``--backend auto`` times torch and onnxruntime on the package and keeps the faster. Each worker
process (``--workers N``) loads its own engine; were each to measure, two workers timing at once
on a loaded machine could keep different backends: one model served two ways, and two
``anytime_model_info`` series on ``/metrics``. So the first worker to load a package measures
while the others wait on its lock (they would only disturb its timing), and writes its choice;
the others build that backend. The parent makes the directory and removes it
(``service/workers.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


class BackendChoices:
    """The backend chosen for each package path, as files in ``directory`` (shared by processes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, package: str | Path) -> Path:
        key = hashlib.sha256(str(Path(package).resolve()).encode()).hexdigest()[:16]
        return self.directory / f"{key}.backend"

    @contextmanager
    def deciding(self, package: str | Path) -> Iterator[None]:
        """Hold ``package``'s lock: one process at a time reads, measures and writes its choice."""
        with FileLock(f"{self._file(package)}.lock"):
            yield

    def get(self, package: str | Path) -> str | None:
        """The backend a worker chose for ``package``, or None before any did."""
        path = self._file(package)
        return path.read_text() if path.exists() else None

    def put(self, package: str | Path, backend: str) -> None:
        self._file(package).write_text(backend)
