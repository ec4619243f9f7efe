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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness.provenance import REPO

PEER_VENVS = REPO / ".peers"
_HANDED_OUT: set[int] = set()  # ports given to servers not listening yet


class LaunchError(RuntimeError):
    """A server did not become ready; the message carries the end of its log."""


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
    checkout: Path | None = None  # another checkout of this repository to run from (default: this)
    # Whether `alone` pauses it while another server is measured: only a server that polls when
    # idle (LitServe). Supervisors that ping their workers (uvicorn's, PyTriton's) count a pause
    # against the ping's timeout and kill a worker on resuming; this service and Triton idle at
    # 0.015 and 0.01 of a core.
    pausable: bool = False


def service_spec(
    package: Path, backend: str | None = "torch", extra: list[str] | None = None, device: str = "cpu"
) -> ServerSpec:
    """``python -m service`` on ``package`` on a free port: on ``device`` with ``backend`` in one
    process (unless ``extra`` names ``--workers``), or, ``backend`` None, with every other setting
    at the service's defaults (``make serve``'s: backend, precision and workers ``auto``)."""
    extra = extra or []
    pinned = [] if backend is None else [
        "--device", device, "--backend", backend, *([] if "--workers" in extra else ["--workers", "1"])
    ]  # fmt: skip
    port = free_port_block(1)
    cmd = [
        sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0",
        "--log-level", "warning", *pinned, *extra,
    ]  # fmt: skip
    return ServerSpec("anytime", cmd, "/readyz", port, {"ANYTIME_MODELS": json.dumps([str(package)])})


def peer_spec(
    peer: str, package: Path, name: str, threads: int, graphs: str = "torch", instances: int = 1
) -> ServerSpec:
    """Triton (``triton``) or LitServe (``litserve``) on the package's full network, from its
    venv under ``.peers`` (``make peers``): the torch model, or the package's ``fp32`` / ``int8``
    ONNX stage graphs on ONNX Runtime (``graphs``), in ``instances`` model instances (Triton) or
    inference worker processes (LitServe)."""
    python = PEER_VENVS / peer / "bin" / "python"
    if not python.is_file():
        raise LaunchError(f"{python} is missing: `make peers` creates the peers' venvs")
    port = free_port_block(3)  # Triton: http, grpc, metrics
    ready = f"/v2/models/{name}/ready" if peer == "triton" else "/health"
    cmd = [str(python), "-m", f"benchmarks.peers.{peer}_server", "--package", str(package),
           "--port", str(port), "--threads", str(threads), "--graphs", graphs,
           "--instances", str(instances)]  # fmt: skip
    return ServerSpec(peer, cmd, ready, port, pausable=peer == "litserve")


def stat_fields(path: Path) -> list[str]:
    """The fields of a ``/proc/.../stat`` after the command name ([0] state, [2] process group,
    [11] utime, [12] stime); empty when the process is gone."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds of the process or thread of ``stat``."""
    f = stat_fields(stat)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if f else 0.0


class Server:
    """A running server; use as a context manager."""

    def __init__(self, spec: ServerSpec, log: Path, ready_timeout_s: float = 300.0) -> None:
        self.spec, self.log, self.url = spec, log, f"http://127.0.0.1:{spec.port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        root = spec.checkout or REPO  # `python -m` puts the working directory first on sys.path
        env = {**os.environ, "PYTHONPATH": str(root), **spec.env}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                spec.command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
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
            ready = self.url + self.spec.ready_path
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(ready, timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.5)
        raise LaunchError(f"{self.spec.name} not ready after {timeout_s:.0f} s: {self.tail()}")

    def tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def pids(self) -> list[int]:
        """The live processes of the server's group (the server first), from /proc."""
        group = [
            int(d.name)
            for d in Path("/proc").iterdir()
            if d.name.isdigit() and (f := stat_fields(d / "stat")) and int(f[2]) == self.proc.pid
        ]
        return sorted(group, key=lambda p: p != self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the group's live processes (children included)."""
        return sum(cpu_seconds(Path(f"/proc/{pid}/stat")) for pid in self.pids())

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


@contextlib.contextmanager
def alone(servers: Iterable[Server], keep: Server | None = None) -> Iterator[None]:
    """Pause (SIGSTOP) every pausable server but ``keep`` for the block, then resume them. An
    idle server may still take CPU (LitServe's inference workers poll: 0.21 of a core while
    idle, on 2 cores), which would fall on whichever server is measured beside it."""
    paused = [s for s in servers if s is not keep and s.spec.pausable and s.proc.poll() is None]
    for s in paused:
        os.killpg(s.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for s in paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(s.proc.pid, signal.SIGCONT)
