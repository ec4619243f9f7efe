"""The Open Inference Protocol over gRPC (KServe v2 / Triton's ``GRPCInferenceService``).

A codec over the same serving layer as ``/v2`` (service/serving.py), in every front-end process,
on the app's event loop (``grpc.aio`` runs on uvloop), started and stopped by the app's lifespan.

The generated messages (``grpc_service_pb2``, package ``inference`` as the specification names
it) register in protobuf's process-wide pool, as Triton's client's own do: the two cannot be
imported into one process. Hence nothing imports them at import time: only a process that serves
gRPC does (service/app.py), and the tests drive it from other processes.
"""
