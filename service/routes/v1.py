"""The v1 API: list models, classify images under a compute budget (a codec over serving)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response

from service.auth import require_api_key
from service.contract import (
    EXAMPLE_PNG_BASE64,
    V1_ERRORS,
    error_responses,
    inline_schema,
    query_parameters,
)
from service.repository import ServedVersion
from service.routes.http import request_context
from service.routes.v1_codec import read_classify_body, to_prediction
from service.schemas import (
    BudgetInfo,
    ClassifyJSON,
    ClassifyResponse,
    ExitInfo,
    InferenceOptions,
    ModelInfo,
    ModelList,
)
from service.serving import serve
from service.state import app_state, get_model, lease_model

router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_api_key)])

_OPTIONS = tuple(InferenceOptions.model_fields)
VERSION = Query(None, ge=1, description="the model version (default: the newest ready one)")
_BINARY = {"type": "string", "format": "binary"}
_CLASSIFY_BODY = {
    "required": True,
    "description": "the images: multipart field `files` (one or many), one raw `image/*` body, "
    'or JSON `{"images": ["<base64>", ...]}` with the options beside them; the options can '
    "also be query parameters.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": _BINARY, "minItems": 1}},
                "required": ["files"],
            }
        },
        "image/*": {"schema": _BINARY},
        "application/json": {
            "schema": inline_schema(ClassifyJSON),
            "example": {"images": [EXAMPLE_PNG_BASE64], "budget": 1.0, "top_k": 3},
        },
    },
}


def model_info(served: ServedVersion) -> ModelInfo:
    loaded, times = served.loaded, served.budget_times
    m = loaded.package.manifest
    default = loaded.engine.plan()  # the plan of a request that gives no option, now
    return ModelInfo(
        name=m.name,
        version=m.version,
        classes=m.classes,
        num_exits=m.num_exits,
        exits=[
            ExitInfo(index=e.index, flops=e.flops, compute_fraction=e.compute_fraction) for e in m.exits
        ],
        budgets=[
            BudgetInfo(
                budget=b.budget,
                expected_compute_fraction=b.expected_compute_fraction,
                accuracy=b.accuracy,
                expected_ms_per_image=t.ms_per_image if (t := times.get(b.budget)) else None,
                expected_images_per_s=t.images_per_s if t else None,
            )
            for b in sorted(m.budgets, key=lambda b: b.budget)
        ],
        default_budget=default.budget,
        precision=loaded.precision,
    )


@router.get("/models", response_model=ModelList, responses=error_responses(V1_ERRORS, 401))
async def list_models(request: Request) -> ModelList:
    return ModelList(models=[model_info(v) for v in app_state(request).registry.ready_versions()])


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses=error_responses(V1_ERRORS, 401, 404, 422, 503),
)
async def get_model_info(name: str, request: Request, version: int | None = VERSION) -> ModelInfo:
    return model_info(get_model(request, name, version))


@router.post(
    "/models/{name}/classify",
    response_model=ClassifyResponse,
    responses=error_responses(V1_ERRORS, 400, 401, 404, 413, 415, 422, 429, 503, 504),
    openapi_extra={"parameters": query_parameters(*_OPTIONS), "requestBody": _CLASSIFY_BODY},
)
async def classify(name: str, request: Request, version: int | None = VERSION) -> Response:
    """Classify images; each leaves at the first exit confident enough for its budget."""
    get_model(request, name, version)  # an unknown model is a 404 before the body is read
    settings = app_state(request).settings
    blobs, options = await read_classify_body(request, settings.limits.max_images_per_request)
    with lease_model(request, name, version) as served_by:
        loaded = served_by.loaded
        served = await serve(loaded, blobs, options, request_context(request), settings)
    classes = loaded.package.manifest.classes
    body = ClassifyResponse(
        model=name,
        version=str(served_by.version),
        budget=served.plan.budget,
        predictions=[to_prediction(r, classes, options.top_k) for r in served.results],
    )
    # Already validated: serialise once instead of letting FastAPI validate it again.
    return Response(body.model_dump_json(), media_type="application/json")
