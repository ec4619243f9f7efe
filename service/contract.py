"""The API contract in one table: each error status, what it means, whether valid requests get it.

The routers document their statuses with :func:`error_responses` (the OpenAPI's ``responses``),
and ``service.schemathesis_config`` derives the committed ``schemathesis.toml`` from the OpenAPI
those routers produce, so that the documented statuses and the statuses the API tests expect
cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.schemas import ErrorEnvelope, InferenceOptions, V2Error


@dataclass(frozen=True)
class ErrorStatus:
    """One error status of the API.

    Attributes:
        description: when the service answers it (the OpenAPI response's description).
        schema_valid: a request the OpenAPI schema allows can still get it, because it depends on
            what the schema cannot say: the image bytes, the service's limits, or the model
            (a budget below the model's budget table, an exit it does not have).
    """

    description: str
    schema_valid: bool


STATUSES: dict[int, ErrorStatus] = {
    400: ErrorStatus(
        "Malformed request: bad JSON, bad base64, a tensor of the wrong shape or type, "
        "or an image that cannot be decoded.",
        True,
    ),
    401: ErrorStatus("API keys are configured and the request carries none of them.", False),
    404: ErrorStatus(
        "No model of that name (or no such version of it) is served here; the message lists the "
        "served ones.",
        False,
    ),
    413: ErrorStatus("Too many bytes, pixels or images for the service's limits.", True),
    415: ErrorStatus("A body in a media type the route does not read.", False),
    422: ErrorStatus(
        "An option out of range. Model-dependent limits: a budget below the model's lowest "
        "budget-table row, or a max_exit beyond its last exit (GET /v1/models/{name} lists both); "
        "the message and detail give the allowed range.",
        True,
    ),
    429: ErrorStatus("The model's queue is full; retry after Retry-After seconds.", False),
    503: ErrorStatus("The model is still loading, or the service is shutting down.", False),
    504: ErrorStatus(
        "No answer within the request's deadline (deadline_ms, else the service's); for a "
        "repository load or unload, a worker process that did not finish in time.",
        False,
    ),
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
}


def error_responses(schema: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route answering ``statuses``, each with the error ``schema``."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": schema, "description": STATUSES[status].description}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out


# A 1x1 PNG: the request bodies' documented examples (that the API tests send as well).
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGOosDkBAAKsAX2zzljdAAAAAElFTkSuQmCC"
)

V1_ERRORS = ErrorEnvelope
V2_ERRORS = V2Error


def option_schemas(*names: str) -> dict[str, dict[str, Any]]:
    """The JSON schemas of the named :class:`InferenceOptions` fields; absent means the default."""
    props = InferenceOptions.model_json_schema()["properties"]
    out = {}
    for name in names:
        prop = dict(props[name])
        # ``X | None`` reads as anyOf [X, null]: "null" is what leaving the option out means.
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        out[name] = {**(branches[0] if branches else {}), **prop}
    return out


def query_parameters(*names: str) -> list[dict[str, Any]]:
    """OpenAPI query parameters for the named options."""
    params = []
    for name, schema in option_schemas(*names).items():
        description = schema.pop("description", "")
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": schema,
            }
        )
    return params


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined, to embed in an OpenAPI operation."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI, less FastAPI's automatic 422s: a path parameter of ours cannot fail.

    (FastAPI documents a validation 422 on every route with parameters; the routes that can
    answer 422 list it themselves, with the error schema they really use.)
    """
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for item in schema["paths"].values():
            for operation in item.values():
                responses = operation.get("responses", {})
                if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                    del responses["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
