"""Side-by-side points run alone: every other server is paused while one is measured."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness.servers import Server, ServerSpec, alone, free_port_block, stat_fields


def _stopped(server: Server) -> bool:
    return stat_fields(Path(f"/proc/{server.proc.pid}/stat"))[0] == "T"


def _eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """``condition`` once signals sent just before are delivered (delivery is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def _http_server(tmp_path: Path, name: str, pausable: bool = True) -> Server:
    port = free_port_block(1)
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    spec = ServerSpec(name, cmd, "/", port, pausable=pausable)
    return Server(spec, tmp_path / f"{name}.log", ready_timeout_s=30)


def test_every_other_server_is_paused_for_the_block_and_resumed_after(tmp_path: Path) -> None:
    with _http_server(tmp_path, "a") as a, _http_server(tmp_path, "b") as b:
        with alone([a, b], keep=a):
            assert _eventually(lambda: _stopped(b)) and not _stopped(a)
        assert _eventually(lambda: not _stopped(a) and not _stopped(b))
        with alone([a, b]):  # the in-process engine's points: no server runs
            assert _eventually(lambda: _stopped(a) and _stopped(b))
        assert _eventually(lambda: not _stopped(a) and not _stopped(b))


def test_only_pausable_servers_are_paused(tmp_path: Path) -> None:
    a, b = _http_server(tmp_path, "a"), _http_server(tmp_path, "b", pausable=False)
    with a, b, alone([a, b], keep=None):
        assert _eventually(lambda: _stopped(a)) and not _stopped(b)
