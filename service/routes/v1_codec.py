"""The v1 classify body in its three forms (multipart, raw image, JSON), and its answer's shape."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from service.engine import ImageResult
from service.errors import (
    BadImageError,
    BadRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from service.routes.http import parse_json, read_body
from service.schemas import ClassifyJSON, InferenceOptions, Prediction, TopK
from service.serving import parse_options

MEDIA_TYPES = "multipart/form-data, image/*, or application/json"


def _replay(body: bytes) -> Receive:
    """An ASGI ``receive`` that hands over an already-read ``body`` in one message."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def read_classify_body(request: Request, limit: int) -> tuple[list[bytes], InferenceOptions]:
    """The images and options of a classify request; at most ``limit`` multipart files."""
    query = {k: v for k, v in request.query_params.items() if k != "version"}  # the route's
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        options = parse_options(query, InferenceOptions)
        # Read against max_body_bytes first: a chunked upload has no Content-Length to refuse up
        # front, and Starlette's parser would spool all of it before we saw its size.
        body = await read_body(request)
        return await _multipart_images(request, body, limit), options
    body = await read_body(request)
    if ctype.startswith("image/"):
        return [body], parse_options(query, InferenceOptions)
    if ctype == "application/json":
        return _json_images(body, query)
    if not ctype:
        raise UnsupportedMediaTypeError(f"missing Content-Type; send {MEDIA_TYPES}")
    raise UnsupportedMediaTypeError(f"unsupported Content-Type {ctype!r}; send {MEDIA_TYPES}")


async def _multipart_images(request: Request, body: bytes, limit: int) -> list[bytes]:
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
        return [await f.read() for f in uploads]
    finally:
        await form.close()


def _json_images(body: bytes, query: dict[str, Any]) -> tuple[list[bytes], InferenceOptions]:
    raw = parse_json(body, "JSON body", '; expected {"images": ["<base64>", ...]}')
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise BadRequestError("JSON body must be an object with a list field 'images'")
    parsed = parse_options({**query, **raw}, ClassifyJSON)
    if not parsed.images:
        raise BadRequestError("'images' is empty")
    blobs = []
    for i, text in enumerate(parsed.images):
        try:
            blobs.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as e:
            raise BadImageError(f"image {i} is not valid base64: {e}") from None
    return blobs, parsed


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
