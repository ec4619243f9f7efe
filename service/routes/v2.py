"""The Open Inference Protocol (KServe v2) REST API, with the binary tensor data extension.

Inputs: exactly one tensor, either ``BYTES [N]`` (encoded images) or ``FP32 [N, 3, H, W]``
(already preprocessed). Request ``parameters``: ``budget``, ``max_exit``, ``threshold``,
``deadline_ms``, ``binary_data_output``. Outputs: ``probabilities FP32 [N, C]``,
``class_index INT64 [N]``, ``exit INT64 [N]``, ``confidence FP32 [N]``,
``compute_fraction FP32 [N]``, ``deadline_exit BOOL [N]``. Errors: ``{"error": "<message>"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

import service
from service.auth import require_api_key
from service.contract import (
    EXAMPLE_PNG_BASE64,
    V2_ERRORS,
    error_responses,
    inline_schema,
    option_schemas,
)
from service.errors import InvalidOptionError, ModelNotFoundError, NotReadyError
from service.middleware import adopt_request_id
from service.routes.http import read_body, request_context
from service.routes.v2_codec import (
    HEADER,
    PARAMETERS,
    PLATFORM,
    decode_bytes_tensor,
    decode_fp32_tensor,
    encode_outputs,
    model_tensors,
    output_arrays,
    output_names,
    parse_infer_body,
    split_binary,
)
from service.schemas import (
    InferenceOptions,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2RequestedOutput,
    V2ServerMetadata,
)
from service.serving import parse_options, serve
from service.state import app_state, get_model, lease_model

health = APIRouter(prefix="/v2", tags=["v2"])
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[Depends(require_api_key)])

_BINARY_OUTPUT = "binary_data_output"


def _infer_openapi() -> dict[str, Any]:
    """The infer request as documented: JSON, or JSON plus binary tensors (the extension)."""
    request = inline_schema(V2InferRequest)
    request["properties"]["parameters"] = {
        "type": "object",
        "description": "inference options; other parameters are ignored",
        "properties": {
            **option_schemas(*PARAMETERS),
            _BINARY_OUTPUT: {"type": "boolean", "description": "every output as binary data"},
        },
    }
    length = {"type": "integer", "minimum": 0}
    return {
        "parameters": [
            {"name": HEADER, "in": "header", "required": False, "schema": length,
             "description": "binary extension: bytes of the JSON head before the tensors' bytes"}
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": request,
                    "example": {
                        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                    "data": [EXAMPLE_PNG_BASE64]}],
                        "parameters": {"budget": 1.0},
                    },
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    }  # fmt: skip


_INFER_RESPONSES = {
    **error_responses(V2_ERRORS, 400, 401, 404, 413, 422, 429, 503, 504),
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {HEADER: {"description": "binary outputs: length of the JSON head",
                             "schema": {"type": "integer"}}},
    },
}  # fmt: skip


@health.get("/health/live", response_model=V2Live)
async def live() -> V2Live:
    return V2Live(live=True)


@health.get(
    "/health/ready",
    response_model=V2Ready,
    responses={503: {"model": V2Ready, "description": "The models are still loading."}},
)
async def ready(request: Request) -> JSONResponse:
    ok = app_state(request).ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("", response_model=V2ServerMetadata, responses=error_responses(V2_ERRORS, 401))
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(
        name="anytime",
        version=service.__version__,
        extensions=["binary_tensor_data", "model_repository"],
    )


def parse_version(version: str | None) -> int | None:
    """A path's version (None: the newest ready one); not a positive integer: 404, no such one."""
    if version is None:
        return None
    if not version.isdecimal() or int(version) < 1:
        raise ModelNotFoundError(f"no version {version!r}: versions are positive integers")
    return int(version)


_METADATA = {
    "response_model": V2ModelMetadata,
    "responses": error_responses(V2_ERRORS, 401, 404, 503),
}
_READY = {
    "response_model": V2ModelReady,
    "responses": {
        **error_responses(V2_ERRORS, 401, 404),
        503: {"model": V2ModelReady, "description": "The model is still loading."},
    },
}
_INFER = {"response_model": V2InferResponse, "responses": _INFER_RESPONSES}


@router.get("/models/{name}", **_METADATA)  # type: ignore[arg-type]
async def model_metadata(name: str, request: Request) -> V2ModelMetadata:
    return _metadata(request, name, None)


@router.get("/models/{name}/versions/{version}", **_METADATA)  # type: ignore[arg-type]
async def model_version_metadata(name: str, version: str, request: Request) -> V2ModelMetadata:
    return _metadata(request, name, parse_version(version))


def _metadata(request: Request, name: str, version: int | None) -> V2ModelMetadata:
    m = get_model(request, name, version).loaded.package.manifest
    ready = [v.version for v in app_state(request).registry.ready_versions() if v.name == name]
    inputs, outputs = model_tensors(m)
    return V2ModelMetadata(
        name=m.name,
        versions=[str(v) for v in sorted(ready)],
        platform=PLATFORM,
        inputs=inputs,
        outputs=outputs,
        parameters={
            "note": "send exactly one input: 'image' (encoded images) or 'input' (preprocessed)",
            "request_parameters": sorted([*PARAMETERS, _BINARY_OUTPUT]),
            "num_exits": m.num_exits,
        },
    )


@router.get("/models/{name}/ready", **_READY)  # type: ignore[arg-type]
async def model_ready(name: str, request: Request) -> JSONResponse:
    return _ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", **_READY)  # type: ignore[arg-type]
async def model_version_ready(name: str, version: str, request: Request) -> JSONResponse:
    return _ready(request, name, parse_version(version))


def _ready(request: Request, name: str, version: int | None) -> JSONResponse:
    try:
        get_model(request, name, version)
    except NotReadyError:
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    return JSONResponse({"name": name, "ready": True})


@router.post("/models/{name}/infer", **_INFER, openapi_extra=_infer_openapi())  # type: ignore[arg-type]
async def model_infer(name: str, request: Request) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    **_INFER,  # type: ignore[arg-type]
    openapi_extra=_infer_openapi(),
)
async def model_version_infer(name: str, version: str, request: Request) -> Response:
    return await _infer(request, name, parse_version(version))


async def _infer(request: Request, name: str, version: int | None) -> Response:
    get_model(request, name, version)  # an unknown model is a 404 before the body is read
    settings = app_state(request).settings
    req, binary = parse_infer_body(await read_body(request), request.headers.get(HEADER))
    adopt_request_id(request.scope.setdefault("state", {}), req.id)
    params = req.parameters or {}
    options = parse_options({k: params[k] for k in PARAMETERS if k in params}, InferenceOptions, True)
    binary_all = params.get(_BINARY_OUTPUT, False)
    if not isinstance(binary_all, bool):
        raise InvalidOptionError(f"parameter {_BINARY_OUTPUT!r} must be a boolean, got {binary_all!r}")
    t = req.inputs[0]  # the request model holds exactly one
    raw = split_binary(req.inputs, binary)[0]
    images = decode_bytes_tensor(t, raw) if t.datatype == "BYTES" else decode_fp32_tensor(t, raw)
    with lease_model(request, name, version) as served_by:
        served = await serve(served_by.loaded, images, options, request_context(request), settings)
    wanted, binary_out = _requested_outputs(req.outputs, binary_all, options.deadline_ms is not None)
    arrays = output_arrays(served.results)
    tensors, blob = encode_outputs([(n, *arrays[n]) for n in wanted], binary_out)
    resp = V2InferResponse(
        model_name=name, model_version=str(served_by.version), id=req.id, outputs=tensors
    )
    head = resp.model_dump_json(exclude_none=True).encode()
    if not blob:
        return Response(head, media_type="application/json")
    return Response(head + blob, media_type="application/octet-stream", headers={HEADER: str(len(head))})


def _requested_outputs(
    outputs: list[V2RequestedOutput] | None, all_binary: bool, with_deadline: bool
) -> tuple[list[str], set[str]]:
    """The outputs to send, in order, and those to send as binary data."""
    names = output_names([o.name for o in outputs or []], with_deadline)
    if not outputs:
        return names, set(names) if all_binary else set()
    binary: set[str] = {o.name for o in outputs if (o.parameters or {}).get("binary_data", all_binary)}
    return names, binary
