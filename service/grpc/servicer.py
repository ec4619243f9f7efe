"""The RPCs of ``GRPCInferenceService``: a codec over the serving layer, as ``/v2`` is over HTTP.

Each RPC answers what its ``/v2`` route answers: the same options (request ``parameters``
``budget``, ``max_exit``, ``threshold``, ``deadline_ms``), the same outputs (``probabilities``,
``class_index``, ``exit``, ``confidence``, ``compute_fraction``, ``deadline_exit``), the same
errors and messages, as gRPC status codes (service/grpc/status.py).
"""

from __future__ import annotations

import service
from service.engine import LoadedModel
from service.errors import ModelNotFoundError, NotReadyError
from service.grpc import codec
from service.grpc import grpc_service_pb2 as pb
from service.grpc.calls import rpc
from service.grpc.grpc_service_pb2_grpc import GRPCInferenceServiceServicer
from service.routes.v2_codec import PARAMETERS, output_arrays, output_names
from service.schemas import InferenceOptions
from service.serving import RequestContext, parse_options, serve
from service.state import AppState, find_model


class InferenceServicer(GRPCInferenceServiceServicer):
    """Every RPC of the service, over the app's state (its models, settings and metrics)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    @rpc(protected=False)
    async def ServerLive(
        self, request: pb.ServerLiveRequest, ctx: RequestContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc(protected=False)
    async def ServerReady(
        self, request: pb.ServerReadyRequest, ctx: RequestContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.ready)

    @rpc()
    async def ModelReady(
        self, request: pb.ModelReadyRequest, ctx: RequestContext
    ) -> pb.ModelReadyResponse:
        try:
            self._model(request.name, request.version)
        except NotReadyError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc()
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, ctx: RequestContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="anytime", version=service.__version__, extensions=[])

    @rpc()
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, ctx: RequestContext
    ) -> pb.ModelMetadataResponse:
        m = self._model(request.name, request.version).package.manifest
        return codec.metadata_response(m, [m.version])

    @rpc()
    async def ModelInfer(
        self, request: pb.ModelInferRequest, ctx: RequestContext
    ) -> pb.ModelInferResponse:
        loaded = self._model(request.model_name, request.model_version)
        params = codec.parameter_values(request.parameters)
        options = parse_options(
            {k: params[k] for k in PARAMETERS if k in params}, InferenceOptions, True
        )
        requested = [o.name for o in request.outputs]
        codec.check_outputs(requested)
        images = codec.request_images(request)
        served = await serve(loaded, images, options, ctx, self.state.settings)
        # deadline_exit comes unasked when the request had a deadline: deadline_ms or gRPC's own
        with_deadline = options.deadline_ms is not None or ctx.timeout_s is not None
        return codec.infer_response(
            request.model_name,
            loaded.package.manifest.version,
            request.id,
            output_arrays(served.results),
            output_names(requested, with_deadline),
        )

    def _model(self, name: str, version: str) -> LoadedModel:
        """The served model ``name`` at ``version`` (empty: the served one)."""
        loaded = find_model(self.state, name)
        served = loaded.package.manifest.version
        if version and version != served:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} here; served: [{served!r}]",
                detail={"versions": [served]},
            )
        return loaded
