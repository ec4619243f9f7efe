"""``python -m service``: serve model packages with uvicorn; ``--help`` lists every setting.

Binds the socket first so that ``--port 0`` works and the printed address is the real one; with
``--workers N`` (N > 1) uvicorn's supervisor runs N server processes on it (service/workers.py).
Likewise the gRPC port: held here, served by every process (service/grpc/listen.py).

Light at import: each spawned worker imports this module again (it is the parent's main module)
before it can answer uvicorn's health check, which kills a worker silent for 5 s; torch and the
app are imported in ``main`` (the parent) and in the worker's app factory (after the check runs).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from service.grpc.listen import reserve_port
from service.logs import configure_logging
from service.settings import ServiceSettings, SettingsFileError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = ServiceSettings(_cli_parse_args=argv)
    except (ValidationError, SettingsFileError) as e:
        print(f"error: invalid settings: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.json_logs)
    missing = [m for m in settings.models if not Path(m).exists()]
    if missing:
        print(f"error: model package not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as e:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {e}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    grpc_sock = None
    if settings.grpc:
        try:
            grpc_sock, grpc_port = reserve_port(settings.host, settings.grpc_port)
        except OSError as e:
            print(
                f"error: cannot listen for gRPC on {settings.host}:{settings.grpc_port}: {e}",
                file=sys.stderr,
            )
            return 1
        # The workers rebuild their settings from argv: the port held, not 0.
        argv = [*argv, "--grpc-port", str(grpc_port)]
        settings = settings.model_copy(update={"grpc_port": grpc_port})
    print(f"anytime serving on http://{shown}:{port}  (docs: http://{shown}:{port}/docs)", flush=True)
    if settings.grpc:
        print(f"anytime gRPC on {shown}:{settings.grpc_port}", flush=True)
    try:
        return _serve(settings, argv, sock)
    finally:
        if grpc_sock is not None:
            grpc_sock.close()


def _serve(settings: ServiceSettings, argv: list[str], sock: socket.socket) -> int:
    options: dict[str, Any] = {
        "log_config": None,
        # uvicorn[standard]'s C event loop and HTTP parser, named so a missing one fails loudly
        # instead of falling back to asyncio and h11.
        "loop": "uvloop",
        "http": "httptools",
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
    }
    from service.topology import resolve_topology, resolve_workers

    shared, workers = resolve_topology(settings) == "shared", resolve_workers(settings)
    if workers > 1 or shared:
        from service.workers import serve_workers

        return serve_workers(settings, argv, sock, options, workers, shared_engine=shared)
    from service.app import create_app

    app = create_app(settings, grpc_port=settings.grpc_port if settings.grpc else None)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    server.run(sockets=[sock])
    # uvicorn exits 0 after a graceful SIGTERM; a failed start-up (bad package) leaves it unstarted.
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
