"""The API contract in one table: each error status, what it means, whether valid requests get it.

The routers document their statuses with :func:`error_responses` (the OpenAPI's ``responses``),
and :func:`schemathesis_config` derives the committed ``schemathesis.toml`` from the OpenAPI those
routers produce, so that the documented statuses and the statuses the API tests expect cannot
drift apart (``python -m service.contract --model NAME > schemathesis.toml`` rewrites it).
"""

from __future__ import annotations

import argparse
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
    404: ErrorStatus("No model of that name is served here; the message lists the served ones.", False),
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
        "No answer within the request's deadline (deadline_ms, else the service's).", False
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


# schemathesis' defaults (its config/_checks.py): what a schema-valid request may get, and what
# is not a server error. Each operation's own statuses are added to these.
_POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
_NOT_A_SERVER_ERROR_DEFAULT = ["2xx", "3xx", "4xx"]


def expected_statuses(responses: dict[str, Any]) -> dict[str, list[str]]:
    """Per check, the statuses one operation may answer beyond schemathesis' defaults.

    positive_data_acceptance: the documented statuses a schema-valid request can still get;
    not_a_server_error: the documented 5xx (503 while loading, 504 past a deadline).
    """
    documented = sorted(int(s) for s in responses if s.isdigit())
    valid = [str(s) for s in documented if s in STATUSES and STATUSES[s].schema_valid]
    server = [str(s) for s in documented if s >= 500]
    out = {}
    if valid:
        out["positive_data_acceptance"] = _POSITIVE_DEFAULT + valid
    if server:
        out["not_a_server_error"] = _NOT_A_SERVER_ERROR_DEFAULT + server
    return out


def schemathesis_config(openapi: dict[str, Any], model: str) -> str:
    """``schemathesis.toml``: ``model`` for every ``{name}``; each operation's expected statuses."""
    lines = [
        "# Generated by `python -m service.contract --model NAME > schemathesis.toml` from the",
        "# service's OpenAPI and the status table in service/contract.py; a test checks it is current.",
        "# `schemathesis run http://HOST:PORT/openapi.json` reads it from here.",
        "",
        "[parameters]",
        f'"path.name" = {json.dumps(model)}',
    ]
    for path, item in sorted(openapi["paths"].items()):
        for method, operation in sorted(item.items()):
            checks = expected_statuses(operation.get("responses", {}))
            if not checks:
                continue
            lines += ["", "[[operations]]", f"include-path = {json.dumps(path)}"]
            lines.append(f"include-method = {json.dumps(method.upper())}")
            for check, statuses in checks.items():
                lines.append(f"checks.{check}.expected-statuses = {json.dumps(statuses)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Print schemathesis.toml for the service's API.")
    parser.add_argument("--model", required=True, help="name of the served model for {name}")
    args = parser.parse_args()
    from service.app import create_app
    from service.settings import ServiceSettings

    openapi = create_app(ServiceSettings(models=[])).openapi()
    print(schemathesis_config(openapi, args.model), end="")


if __name__ == "__main__":
    main()
