"""The RPCs of ``GRPCInferenceService``: a codec over the serving layer, as ``/v2`` is over HTTP.

Each RPC answers what its ``/v2`` route answers: the same options (request ``parameters``
``budget``, ``max_exit``, ``threshold``, ``deadline_ms``), the same outputs (``probabilities``,
``class_index``, ``exit``, ``confidence``, ``compute_fraction``, ``deadline_exit``), the same
errors and messages, as gRPC status codes (service/grpc/status.py).
"""

from __future__ import annotations

import anyio

import service
from service.errors import NotReadyError
from service.grpc import codec
from service.grpc import grpc_service_pb2 as pb
from service.grpc.calls import answering_version, rpc
from service.grpc.grpc_service_pb2_grpc import GRPCInferenceServiceServicer
from service.repository import ModelState
from service.repository.control import RepositoryControl
from service.routes.v2 import parse_version
from service.routes.v2_codec import PARAMETERS, output_arrays, output_names
from service.schemas import InferenceOptions
from service.serving import RequestContext, parse_options, serve
from service.state import AppState


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
            self.state.registry.resolve(request.name, _version(request.version))
        except NotReadyError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc()
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, ctx: RequestContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="anytime", version=service.__version__, extensions=["model_repository"]
        )

    @rpc()
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, ctx: RequestContext
    ) -> pb.ModelMetadataResponse:
        registry = self.state.registry
        served = registry.resolve(request.name, _version(request.version))
        ready = sorted(v.version for v in registry.ready_versions() if v.name == request.name)
        return codec.metadata_response(served.loaded.package.manifest, [str(v) for v in ready])

    @rpc()
    async def ModelInfer(
        self, request: pb.ModelInferRequest, ctx: RequestContext
    ) -> pb.ModelInferResponse:
        version = _version(request.model_version)
        params = codec.parameter_values(request.parameters)
        options = parse_options(
            {k: params[k] for k in PARAMETERS if k in params}, InferenceOptions, True
        )
        requested = [o.name for o in request.outputs]
        codec.check_outputs(requested)
        images = codec.request_images(request)
        # Held until answered: an unload of this version drains the request first.
        with self.state.registry.lease(request.model_name, version) as served:
            answering_version.set(str(served.version))
            answers = await serve(served.loaded, images, options, ctx, self.state.settings)
        # deadline_exit comes unasked when the request had a deadline: deadline_ms or gRPC's own
        with_deadline = options.deadline_ms is not None or ctx.timeout_s is not None
        return codec.infer_response(
            request.model_name,
            str(served.version),
            request.id,
            output_arrays(answers.results),
            output_names(requested, with_deadline),
        )

    @rpc()
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, ctx: RequestContext
    ) -> pb.RepositoryIndexResponse:
        entries = await anyio.to_thread.run_sync(self._control().index)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(
                    name=e.name,
                    version="" if e.version is None else str(e.version),
                    state=e.state.value,
                    reason=e.reason,
                )
                for e in entries
                if not request.ready or e.state is ModelState.READY
            ]
        )

    @rpc()
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, ctx: RequestContext
    ) -> pb.RepositoryModelLoadResponse:
        config = codec.load_config(request.parameters)
        await anyio.to_thread.run_sync(self._control().load, request.model_name, config)
        return pb.RepositoryModelLoadResponse()

    @rpc()
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, ctx: RequestContext
    ) -> pb.RepositoryModelUnloadResponse:
        await anyio.to_thread.run_sync(self._control().unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _control(self) -> RepositoryControl:
        if self.state.control is None:
            raise NotReadyError("the model repository is still loading")
        return self.state.control


def _version(version: str) -> int | None:
    """A request's model version: empty for the newest ready one; not a positive integer: 404."""
    return parse_version(version or None)
