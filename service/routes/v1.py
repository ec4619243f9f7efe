"""The v1 API: list models, classify images under a compute budget."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, cast

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from service.engine import ImageResult, LoadedModel
from service.errors import (
    BadImageError,
    BadRequestError,
    InvalidOptionError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from service.policy import resolve_plan
from service.routes.deps import (
    app_state,
    decode_images,
    get_model,
    infer,
    read_body,
    require_api_key,
)
from service.schemas import (
    BudgetInfo,
    ClassifyJSON,
    ClassifyOptions,
    ClassifyResponse,
    ErrorEnvelope,
    ExitInfo,
    ModelInfo,
    ModelList,
    Prediction,
    TopK,
)

router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorEnvelope} for s in (400, 401, 404, 413, 415, 422, 429, 503, 504)
}


def model_info(loaded: LoadedModel, default_budget: float | None) -> ModelInfo:
    m = loaded.package.manifest
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
            )
            for b in sorted(m.budgets, key=lambda b: b.budget)
        ],
        default_budget=default_budget or m.default_budget or 1.0,
    )


@router.get("/models", response_model=ModelList, responses=_ERRORS)
async def list_models(request: Request) -> ModelList:
    state = app_state(request)
    return ModelList(
        models=[model_info(m, state.settings.default_budget) for m in state.models.values()]
    )


@router.get("/models/{name}", response_model=ModelInfo, responses=_ERRORS)
async def get_model_info(name: str, request: Request) -> ModelInfo:
    return model_info(get_model(request, name), app_state(request).settings.default_budget)


@router.post(
    "/models/{name}/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "description": "multipart field `files` (one or many), a raw `image/*` body, or JSON "
            '`{"images": [base64...], "budget": ...}`; options also as query parameters.',
            "content": {
                "multipart/form-data": {"schema": {"type": "object"}},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": ClassifyJSON.model_json_schema()},
            },
        }
    },
)
async def classify(name: str, request: Request) -> Response:
    """Classify images; each leaves at the first exit confident enough for its budget."""
    loaded = get_model(request, name)
    state = app_state(request)
    blobs, options = await read_classify_body(request)
    plan = resolve_plan(
        loaded.package.manifest,
        budget=options.budget,
        threshold=options.threshold,
        max_exit=options.max_exit,
        default_budget=loaded.engine.default_budget(),
    )
    images = await decode_images(blobs, loaded, state)
    results = await infer(request, loaded, images, plan, options.deadline_ms)
    classes = loaded.package.manifest.classes
    body = ClassifyResponse(
        model=name,
        budget=plan.budget,
        predictions=[to_prediction(r, classes, options.top_k) for r in results],
    )
    # Already validated: serialise once instead of letting FastAPI validate it again.
    return Response(body.model_dump_json(), media_type="application/json")


def to_prediction(result: ImageResult, classes: list[str], top_k: int) -> Prediction:
    # A stable sort by descending probability: ties keep the lower class index first.
    order = np.argsort(-result.probs, kind="stable")[: min(top_k, len(classes))]
    top = [
        TopK(class_index=int(i), class_name=classes[int(i)], probability=float(result.probs[i]))
        for i in order
    ]
    return Prediction(
        class_index=top[0].class_index,
        class_name=top[0].class_name,
        confidence=top[0].probability,
        exit=result.exit,
        compute_fraction=result.compute_fraction,
        top_k=top,
        deadline_exit=result.deadline_exit,
    )


def _options(raw: dict[str, Any], model: type[ClassifyOptions] = ClassifyOptions) -> ClassifyOptions:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]} for err in e.errors()
        ]
        raise InvalidOptionError(
            "invalid options: " + "; ".join(f"{p['field']}: {p['problem']}" for p in problems),
            detail=problems,
        ) from None


def _replay(body: bytes) -> Receive:
    """An ASGI ``receive`` that hands over an already-read ``body`` in one message."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def read_classify_body(request: Request) -> tuple[list[bytes], ClassifyOptions]:
    """The images and options of a classify request, in any of the three body forms."""
    query = dict(request.query_params)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    state = app_state(request)
    if ctype == "multipart/form-data":
        options = _options(query)
        limit = state.settings.limits.max_images_per_request
        # Read against max_body_bytes first: a chunked upload has no Content-Length to refuse up
        # front, and Starlette's parser would spool all of it before we saw its size.
        body = await read_body(request)
        try:
            form = await Request(request.scope, _replay(body)).form(max_files=limit, max_fields=100)
        except HTTPException as e:  # Starlette reports multipart limits and syntax as a bare 400
            if "too many files" in str(e.detail).lower():
                raise PayloadTooLargeError(
                    f"more than {limit} images in one request; the limit is {limit}",
                    detail={"limit": limit},
                ) from None
            raise BadRequestError(f"malformed multipart body: {e.detail}") from None
        try:
            uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            if not uploads:
                raise BadRequestError("multipart body has no file in the field 'files'")
            return [await f.read() for f in uploads], options
        finally:
            await form.close()
    body = await read_body(request)
    if ctype.startswith("image/"):
        return [body], _options(query)
    if ctype == "application/json":
        return _json_images(body, query)
    if not ctype:
        raise UnsupportedMediaTypeError(
            "missing Content-Type; send multipart/form-data, image/*, or application/json"
        )
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Type {ctype!r}; send multipart/form-data, image/*, or application/json"
    )


def _json_images(body: bytes, query: dict[str, Any]) -> tuple[list[bytes], ClassifyOptions]:
    if not body:
        raise BadRequestError('empty JSON body; expected {"images": ["<base64>", ...]}')
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequestError(f"body is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise BadRequestError("JSON body must be an object with a list field 'images'")
    parsed = cast(ClassifyJSON, _options({**query, **raw}, ClassifyJSON))
    if not parsed.images:
        raise BadRequestError("'images' is empty")
    blobs = []
    for i, text in enumerate(parsed.images):
        try:
            blobs.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as e:
            raise BadImageError(f"image {i} is not valid base64: {e}") from None
    return blobs, parsed
