"""The gRPC port held for the worker processes, and the service's errors as gRPC codes."""

from __future__ import annotations

import socket

import grpc
import pytest

from service import errors
from service.grpc.listen import grpc_address, reserve_port
from service.grpc.status import grpc_code


def _listener(port: int, reuseport: bool) -> socket.socket:
    s = socket.socket()
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_held_port_takes_the_workers_listeners_and_refuses_others() -> None:
    held, port = reserve_port("127.0.0.1", 0)
    try:
        assert port > 0 and held.getsockname()[1] == port
        # Two workers' servers (SO_REUSEPORT) share it; a program without the option cannot.
        workers = [_listener(port, reuseport=True) for _ in range(2)]
        with pytest.raises(OSError):
            _listener(port, reuseport=False)
        for w in workers:
            w.close()
    finally:
        held.close()


def test_a_port_another_server_listens_on_is_refused() -> None:
    # Even one that shares (SO_REUSEPORT): a second service must not take half its connections.
    other = _listener(0, reuseport=True)
    try:
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", other.getsockname()[1])
    finally:
        other.close()


def test_ipv6_addresses_are_bracketed() -> None:
    assert grpc_address("::1", 8001) == "[::1]:8001"
    assert grpc_address("0.0.0.0", 8001) == "0.0.0.0:8001"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.BadRequestError, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.BadImageError, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidOptionError, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnauthorizedError, grpc.StatusCode.UNAUTHENTICATED),
        (errors.ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
        (errors.PayloadTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.ClientDisconnectedError, grpc.StatusCode.CANCELLED),
        (errors.NotReadyError, grpc.StatusCode.UNAVAILABLE),
        (errors.EngineStoppedError, grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_each_error_has_its_grpc_code(error: type[errors.ServiceError], code: grpc.StatusCode) -> None:
    assert grpc_code(error.status) == code


def test_every_service_error_is_mapped() -> None:
    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    unmapped = [
        c.__name__ for c in subclasses(errors.ServiceError) if grpc_code(c.status).name == "UNKNOWN"
    ]
    assert unmapped == []


def test_the_cli_refuses_a_grpc_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    import service.__main__ as cli

    other = _listener(0, reuseport=True)
    try:
        port = other.getsockname()[1]
        assert cli.main(["--port", "0", "--grpc-port", str(port)]) == 1
    finally:
        other.close()
    assert f"error: cannot listen for gRPC on 127.0.0.1:{port}" in capsys.readouterr().err
