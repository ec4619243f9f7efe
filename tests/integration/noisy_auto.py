"""``python -m tests.integration.noisy_auto ARGS``: ``python -m service ARGS`` whose ``auto`` backend
measurements disagree from one process to the next.

``--backend auto`` times torch and onnxruntime and keeps the faster. On a loaded machine two
worker processes measuring at once can see different winners; here that noise is made certain:
the first process of a run (counted in the file ``$NOISY_AUTO_ORDER``) to measure sees torch
faster, the second onnxruntime, and so on. The patch reaches spawned workers through their app
factory (``create_worker_app`` below); this module stays light at import, as ``service.__main__``
does, because each worker imports it again before it answers uvicorn's health check.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Any

from service.__main__ import main

ORDER_ENV = "NOISY_AUTO_ORDER"
_order: list[int] = []


def process_order() -> int:
    """0 for the first process of the run that asks, 1 for the next, ..."""
    if not _order:
        with Path(os.environ[ORDER_ENV]).open("a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            _order.append(len(f.read()))
            f.write("x")
    return _order[0]


def disagreeing_full_pass(
    backend: Any, num_exits: int, shape: tuple[int, ...], repeats: int = 5
) -> float:
    """Seconds of a full pass as this process "measures" them: its winner takes 1 ms, the other 2."""
    winner = "torch" if process_order() % 2 == 0 else "onnxruntime"
    return 0.001 if backend.name == winner else 0.002


def patch() -> None:
    import service.engine.backends as backends

    backends.time_full_pass = disagreeing_full_pass


def create_worker_app() -> Any:
    """``service.workers.create_worker_app`` with the patch (uvicorn calls it in each worker)."""
    patch()
    from service.workers import create_worker_app as create

    return create()


if __name__ == "__main__":
    import service.workers

    patch()  # a single process measures here
    service.workers.WORKER_APP = "tests.integration.noisy_auto:create_worker_app"
    sys.exit(main())
