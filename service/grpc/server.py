"""The gRPC server of one process: ``grpc.aio`` on the app's running event loop (uvloop works),
so that its RPCs await the serving layer as the HTTP routes do, with no thread between them."""

from __future__ import annotations

import grpc

from service.grpc.grpc_service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from service.grpc.listen import grpc_address
from service.grpc.servicer import InferenceServicer
from service.state import AppState


async def start_grpc_server(state: AppState, host: str, port: int) -> grpc.aio.Server:
    """Listen on ``host:port`` and answer the Open Inference Protocol's RPCs from ``state``.

    Raises:
        RuntimeError: the port cannot be bound (the message names it).
    """
    limit = state.settings.limits.max_body_bytes
    server = grpc.aio.server(
        options=[
            # several worker processes share the port (service/grpc/listen.py)
            ("grpc.so_reuseport", 1),
            # a request's size limit is the HTTP body's: larger messages get RESOURCE_EXHAUSTED
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
        ]
    )
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
    address = grpc_address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {e}") from None
    if bound == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    await server.start()
    return server
