"""The Open Inference Protocol (KServe v2) REST API, with the binary tensor data extension.

Inputs: exactly one tensor, either ``BYTES [N]`` (encoded images) or ``FP32 [N, 3, H, W]``
(already preprocessed). Request ``parameters``: ``budget``, ``max_exit``, ``threshold``,
``binary_data_output``. Outputs: ``probabilities FP32 [N, C]``, ``class_index INT64 [N]``,
``exit INT64 [N]``, ``confidence FP32 [N]``, ``compute_fraction FP32 [N]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

import service
from service.engine import ImageResult, LoadedModel
from service.errors import BadRequestError, InvalidOptionError, NotReadyError
from service.policy import resolve_plan
from service.routes.deps import (
    app_state,
    check_image_count,
    decode_images,
    get_model,
    infer,
    read_body,
    require_api_key,
)
from service.routes.v2_codec import (
    HEADER,
    decode_bytes_tensor,
    decode_fp32_tensor,
    encode_outputs,
    parse_infer_body,
    split_binary,
)
from service.schemas import (
    V2InferResponse,
    V2ModelMetadata,
    V2ServerMetadata,
    V2TensorMetadata,
)

health = APIRouter(prefix="/v2", tags=["v2"])
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[Depends(require_api_key)])

OUTPUTS = ("probabilities", "class_index", "exit", "confidence", "compute_fraction")
_OPTIONS = {"budget": float, "max_exit": int, "threshold": float, "deadline_ms": float}
# Output only on request, or by default when the request carries a deadline_ms (issue 7).
DEADLINE_OUTPUT = "deadline_exit"


@health.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@health.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    ok = app_state(request).ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("", response_model=V2ServerMetadata)
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(
        name="anytime", version=service.__version__, extensions=["binary_tensor_data"]
    )


@router.get("/models/{name}", response_model=V2ModelMetadata)
async def model_metadata(name: str, request: Request) -> V2ModelMetadata:
    m = get_model(request, name).package.manifest
    h, w = m.preprocessing.input_size
    c = len(m.classes)
    return V2ModelMetadata(
        name=m.name,
        versions=[m.version],
        platform="anytime_early_exit",
        inputs=[
            V2TensorMetadata(name="image", datatype="BYTES", shape=[-1]),
            V2TensorMetadata(name="input", datatype="FP32", shape=[-1, 3, h, w]),
        ],
        outputs=[
            V2TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, c]),
            V2TensorMetadata(name="class_index", datatype="INT64", shape=[-1]),
            V2TensorMetadata(name="exit", datatype="INT64", shape=[-1]),
            V2TensorMetadata(name="confidence", datatype="FP32", shape=[-1]),
            V2TensorMetadata(name="compute_fraction", datatype="FP32", shape=[-1]),
            V2TensorMetadata(name=DEADLINE_OUTPUT, datatype="BOOL", shape=[-1]),
        ],
        parameters={
            "note": "send exactly one input: 'image' (encoded images) or 'input' (preprocessed)",
            "request_parameters": sorted(_OPTIONS),
            "num_exits": m.num_exits,
        },
    )


@router.get("/models/{name}/ready")
async def model_ready(name: str, request: Request) -> JSONResponse:
    try:
        get_model(request, name)
    except NotReadyError:
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    return JSONResponse({"name": name, "ready": True})


@router.post("/models/{name}/infer", response_model=V2InferResponse)
async def model_infer(name: str, request: Request) -> Response:
    loaded = get_model(request, name)
    state = app_state(request)
    body = await read_body(request)
    req, binary = parse_infer_body(body, request.headers.get(HEADER))
    params = req.parameters or {}
    options = _options(params)
    deadline_ms = options.pop("deadline_ms", None)
    if deadline_ms is not None and deadline_ms <= 0:
        raise InvalidOptionError(f"parameter 'deadline_ms' must be > 0, got {deadline_ms}")
    plan = resolve_plan(
        loaded.package.manifest, default_budget=loaded.engine.default_budget(), **options
    )
    if len(req.inputs) != 1:
        raise BadRequestError(f"expected exactly one input tensor, got {len(req.inputs)}")
    t = req.inputs[0]
    raw = split_binary(req.inputs, binary)[0]
    if t.datatype == "BYTES":
        images = await decode_images(decode_bytes_tensor(t, raw), loaded, state)
    elif t.datatype == "FP32":
        images = _check_fp32(decode_fp32_tensor(t, raw), loaded)
        check_image_count(images.shape[0], state)
    else:
        raise BadRequestError(f"input {t.name!r}: datatype {t.datatype} unsupported; use BYTES or FP32")
    results = await infer(request, loaded, images, plan, deadline_ms)
    wanted, binary_out = _requested_outputs(req.outputs, params, deadline_ms is not None)
    arrays = _output_arrays(results)
    tensors, blob = encode_outputs([(n, *arrays[n]) for n in wanted], binary_out)
    resp = V2InferResponse(
        model_name=name, model_version=loaded.package.manifest.version, id=req.id, outputs=tensors
    )
    head = resp.model_dump_json(exclude_none=True).encode()
    if not blob:
        return Response(head, media_type="application/json")
    return Response(head + blob, media_type="application/octet-stream", headers={HEADER: str(len(head))})


def _options(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in _OPTIONS.items():
        if key not in params:
            continue
        value = params[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int and not isinstance(value, int):
            ok = False
        if not ok:
            raise InvalidOptionError(f"parameter {key!r} must be a number, got {value!r}")
        out[key] = kind(value)
    return out


def _check_fp32(x: torch.Tensor, loaded: LoadedModel) -> torch.Tensor:
    h, w = loaded.package.manifest.preprocessing.input_size
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, h, w) or x.shape[0] < 1:
        raise BadRequestError(f"FP32 input must have shape [N, 3, {h}, {w}], got {list(x.shape)}")
    return x


def _requested_outputs(
    outputs: Any, params: dict[str, Any], with_deadline: bool = False
) -> tuple[list[str], set[str]]:
    all_binary = bool(params.get("binary_data_output", False))
    if not outputs:
        names = [*OUTPUTS, DEADLINE_OUTPUT] if with_deadline else list(OUTPUTS)
        return names, set(names) if all_binary else set()
    names, binary = [], set()
    known = [*OUTPUTS, DEADLINE_OUTPUT]
    for o in outputs:
        if o.name not in known:
            raise BadRequestError(f"unknown output {o.name!r}; outputs are {known}")
        names.append(o.name)
        if (o.parameters or {}).get("binary_data", all_binary):
            binary.add(o.name)
    return names, binary


def _output_arrays(results: list[ImageResult]) -> dict[str, tuple[str, np.ndarray]]:
    probs = np.stack([r.probs for r in results]).astype(np.float32)
    return {
        "probabilities": ("FP32", probs),
        "class_index": ("INT64", probs.argmax(axis=1).astype(np.int64)),
        "exit": ("INT64", np.array([r.exit for r in results], dtype=np.int64)),
        "confidence": ("FP32", probs.max(axis=1).astype(np.float32)),
        "compute_fraction": ("FP32", np.array([r.compute_fraction for r in results], dtype=np.float32)),
        DEADLINE_OUTPUT: ("BOOL", np.array([r.deadline_exit for r in results], dtype=np.bool_)),
    }
