"""The gRPC port: checked free and held by the parent process, shared by every worker.

Every worker process runs its own gRPC server on the one port with ``SO_REUSEPORT``: the kernel
spreads incoming connections across them (each HTTP/2 connection stays with the worker that
accepted it, as HTTP keep-alive connections do). One port per worker would make every client
know N ports; one process answering gRPC for all would add a hop to another process.
"""

from __future__ import annotations

import socket


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Check that ``port`` is free on ``host`` (any free port for 0) and hold it.

    The check binds without ``SO_REUSEPORT``, so a port another server listens on is refused
    with an error (``OSError``) instead of silently shared with it. The held socket binds with
    ``SO_REUSEPORT`` and never listens: the gRPC servers of this process or its workers join it
    (they bind with ``SO_REUSEPORT`` too) and no other program takes the port meanwhile.

    Returns:
        The held socket (close it when serving ends) and the port number.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP socket
        probe.bind((host, port))
        port = probe.getsockname()[1]
    held = socket.socket(family, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((host, port))
    except OSError:
        held.close()
        raise
    return held, port


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC spells it (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
