"""The API contract: documented statuses and error schemas, option ranges, the schemathesis config."""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.contract import STATUSES
from service.schemathesis_config import schemathesis_config
from service.settings import ServiceSettings
from tests.service.fixtures import NAME

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "schemathesis.toml"


@pytest.fixture(scope="module")
def openapi() -> dict:
    return create_app(ServiceSettings(models=[], intra_op_threads=0)).openapi()


def test_the_committed_schemathesis_config_is_generated_from_the_openapi(openapi: dict) -> None:
    committed = CONFIG.read_text()
    model = tomllib.loads(committed)["parameters"]["path.name"]
    assert committed == schemathesis_config(openapi, model), (
        "schemathesis.toml is stale: "
        "python -m service.schemathesis_config --model NAME > schemathesis.toml"
    )


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/v1/models/{name}/classify", [400, 401, 404, 413, 415, 422, 429, 503, 504]),
        ("get", "/v1/models/{name}", [401, 404, 422, 503]),
        ("get", "/v1/models", [401]),
        ("post", "/v2/models/{name}/infer", [400, 401, 404, 413, 422, 429, 503, 504]),
        ("get", "/v2/models/{name}", [401, 404, 503]),
        ("get", "/metrics", [401]),
    ],
)
def test_each_route_documents_its_errors_in_its_protocols_shape(
    openapi: dict, method: str, path: str, statuses: list[int]
) -> None:
    responses = openapi["paths"][path][method]["responses"]
    errors = sorted(int(s) for s in responses if int(s) >= 400 and int(s) in STATUSES)
    assert errors == statuses
    shape = "V2Error" if path.startswith("/v2") else "ErrorEnvelope"
    for s in statuses:
        if path.endswith("/ready") and s == 503:
            continue
        schema = responses[str(s)]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{shape}"}, (path, s)
        assert responses[str(s)]["description"] == STATUSES[s].description
    assert "HTTPValidationError" not in str(openapi)  # FastAPI's 422 is no shape of ours


def test_the_documented_option_ranges_are_what_the_service_accepts(
    openapi: dict, client: TestClient, images: list[bytes]
) -> None:
    params = {
        p["name"]: p["schema"]
        for p in openapi["paths"]["/v1/models/{name}/classify"]["post"]["parameters"]
        if p["in"] == "query"
    }
    v2 = openapi["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    v2_params = v2["application/json"]["schema"]["properties"]["parameters"]["properties"]
    for k in ("budget", "max_exit", "threshold", "deadline_ms"):  # one options model, both ways
        assert {**v2_params[k], "description": None} == {**params[k], "description": None}, k
    url = f"/v1/models/{NAME}/classify"
    png = {"content": images[0], "headers": {"content-type": "image/png"}}
    edges = {  # the schema's bounds, accepted; just past them, refused
        "budget": (params["budget"]["maximum"], params["budget"]["exclusiveMinimum"]),
        "threshold": (params["threshold"]["minimum"], params["threshold"]["maximum"] + 0.1),
        "top_k": (params["top_k"]["maximum"], params["top_k"]["maximum"] + 1),
        "max_exit": (params["max_exit"]["minimum"], params["max_exit"]["minimum"] - 1),
    }
    for name, (inside, outside) in edges.items():
        assert client.post(url, params={name: inside}, **png).status_code == 200, name
        assert client.post(url, params={name: outside}, **png).status_code == 422, name


def test_a_model_dependent_limit_is_a_422_with_the_allowed_range(client: TestClient) -> None:
    # Budget 0.3 is within the schema's (0, 1], below the tiny model's lowest row (0.6).
    body = {"images": [base64.b64encode(b"unused").decode()], "budget": 0.3}
    r = client.post(f"/v1/models/{NAME}/classify", json=body)
    assert r.status_code == 422
    err = r.json()["error"]
    assert "between 0.6 and 1.0" in err["message"]
    assert err["detail"]["min"] == 0.6 and err["detail"]["max"] == 1.0
    r = client.post(f"/v1/models/{NAME}/classify", json={**body, "budget": None, "max_exit": 3})
    assert r.status_code == 422 and r.json()["error"]["detail"]["max"] == 2
