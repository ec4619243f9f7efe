"""Start a server under test in its own process group, wait until it is ready, stop it.

One class for this service and the peers: a peer (tritonserver, LitServe's inference worker)
starts child processes of its own, so the whole group is stopped, never only the parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class LaunchError(RuntimeError):
    """A server did not become ready; the message carries the end of its log."""


_HANDED_OUT: set[int] = set()  # ports given to servers not listening yet


def free_port_block(n: int = 1, start: int = 20000, stop: int = 60000) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1 (Triton takes http, grpc, metrics),
    none of them handed out before by this process."""
    for base in range(start + os.getpid() % 1000 * 37, stop, 7):
        if _HANDED_OUT & set(range(base, base + n)):
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        _HANDED_OUT.update(range(base, base + n))
        return base
    raise LaunchError(f"no {n} consecutive free ports in [{start}, {stop})")


@dataclass
class ServerSpec:
    """How to start one server and how to ask whether it is ready."""

    name: str
    command: list[str]
    ready_path: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def service_spec(package: Path, port: int, extra: list[str] | None = None) -> ServerSpec:
    """``python -m service`` on ``package`` with the torch backend on the CPU."""
    cmd = [
        sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
        "--device", "cpu", "--backend", "torch", "--log-level", "warning", *(extra or []),
    ]  # fmt: skip
    return ServerSpec("anytime", cmd, "/readyz", port, {"ANYTIME_MODELS": json.dumps([str(package)])})


class Server:
    """A running server; use as a context manager."""

    def __init__(self, spec: ServerSpec, log: Path, ready_timeout_s: float = 300.0) -> None:
        self.spec = spec
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO), **spec.env}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                spec.command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches its children
            )  # fmt: skip
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"{self.spec.name} exited {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.spec.url + self.spec.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise LaunchError(f"{self.spec.name} not ready after {timeout_s:.0f} s: {self.tail()}")

    def tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def pids(self) -> list[int]:
        """The live processes of the server's group (the server first), from /proc."""
        out = []
        for d in Path("/proc").iterdir():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split() if d.name.isdigit() else []
            except OSError:
                continue
            if fields and int(fields[2]) == self.proc.pid:  # fields[2]: the process group
                out.append(int(d.name))
        return sorted(out, key=lambda p: p != self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the group's live processes (children included)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
