"""The KServe v2 (Open Inference Protocol) API: metadata, JSON and binary tensors both ways."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.package import ModelPackage
from service.images import images_to_batch
from tests.service.fixtures import LIMITS, NAME, reference_answers
from tests.service.v2_client import bytes_request, decode_response, fp32_request

INFER = f"/v2/models/{NAME}/infer"


def test_server_and_model_metadata(client: TestClient) -> None:
    server = client.get("/v2").json()
    assert server["name"] == "anytime" and "binary_tensor_data" in server["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME and meta["versions"] == ["1"]
    assert {i["datatype"] for i in meta["inputs"]} == {"BYTES", "FP32"}
    assert [o["name"] for o in meta["outputs"]] == [
        "probabilities", "class_index", "exit", "confidence", "compute_fraction", "deadline_exit"
    ]  # fmt: skip
    assert client.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    missing = client.get("/v2/models/nope/ready")
    assert missing.status_code == 404 and NAME in missing.json()["error"]
    assert client.get("/v2/nothing").json() == {"error": "no route GET /v2/nothing"}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("kind", ["BYTES", "FP32"])
def test_infer_matches_the_reference(
    client: TestClient, reference_package: ModelPackage, images: list[bytes], binary: bool, kind: str
) -> None:
    blobs = images[:6]
    if kind == "BYTES":
        body, headers = bytes_request(blobs, binary, budget=0.6, binary_data_output=binary)
    else:
        x = images_to_batch(blobs, reference_package.manifest.preprocessing, LIMITS).numpy()
        body, headers = fp32_request(x, binary, budget=0.6, binary_data_output=binary)
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert ("inference-header-content-length" in r.headers) == binary
    out = decode_response(r.content, r.headers)
    want = reference_answers(
        reference_package, blobs, reference_package.manifest.budget_entry(0.6).thresholds
    )
    assert out["probabilities"].shape == (6, 10)
    assert out["exit"].tolist() == [w.exit for w in want]
    assert out["class_index"].tolist() == [w.class_index for w in want]
    np.testing.assert_allclose(
        out["probabilities"], np.stack([w.probs.numpy() for w in want]), atol=1e-4
    )
    np.testing.assert_allclose(out["confidence"], out["probabilities"].max(axis=1), rtol=1e-6)


def test_requested_outputs_and_per_output_binary(client: TestClient, images: list[bytes]) -> None:
    body, headers = bytes_request(images[:2], False, max_exit=0)
    req = json.loads(body)
    req["outputs"] = [{"name": "exit"}, {"name": "class_index", "parameters": {"binary_data": True}}]
    r = client.post(INFER, content=json.dumps(req), headers=headers)
    head = json.loads(r.content[: int(r.headers["inference-header-content-length"])])
    assert [o["name"] for o in head["outputs"]] == ["exit", "class_index"]
    assert head["outputs"][0]["data"] == [0, 0]
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 16}
    assert decode_response(r.content, r.headers)["class_index"].shape == (2,)


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda r: r.update(inputs=[]), 400),
        (lambda r: r["inputs"][0].update(datatype="INT8"), 400),
        (lambda r: r["inputs"][0].update(shape=[3]), 400),
        (lambda r: r["inputs"][0].update(shape=[0], data=[]), 400),  # no image: not a 500
        (lambda r: r["inputs"][0].update(data=["***"]), 400),
        (lambda r: r.update(parameters={"budget": "cheap"}), 422),
        (lambda r: r.update(parameters={"max_exit": 9}), 422),
        (lambda r: r.update(parameters={"budget": True}), 422),  # JSON types: a bool is no number
        (lambda r: r.update(parameters={"deadline_ms": 0}), 422),
        (lambda r: r.update(parameters={"binary_data_output": "yes"}), 422),
        (lambda r: r.update(outputs=[{"name": "logits"}]), 400),
    ],
)
def test_bad_v2_requests(
    client: TestClient, images: list[bytes], mutate: Callable[[dict], None], status: int
) -> None:
    body, headers = bytes_request(images[:1], False)
    req = json.loads(body)
    mutate(req)
    r = client.post(INFER, content=json.dumps(req), headers=headers)
    assert r.status_code == status, r.text
    body = r.json()  # the Open Inference Protocol's error shape, not v1's envelope
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]


def test_bad_fp32_tensors_and_binary_framing(client: TestClient) -> None:
    wrong = np.zeros((1, 3, 16, 16), dtype=np.float32)
    r = client.post(INFER, content=fp32_request(wrong, True)[0], headers=fp32_request(wrong, True)[1])
    assert r.status_code == 400 and "[N, 3, 32, 32]" in r.json()["error"]
    nan = np.full((1, 3, 32, 32), np.nan, dtype=np.float32)
    body, headers = fp32_request(nan, True)
    assert client.post(INFER, content=body, headers=headers).status_code == 400
    body, headers = fp32_request(np.zeros((1, 3, 32, 32), dtype=np.float32), True)
    assert client.post(INFER, content=body[:-8], headers=headers).status_code == 400
    assert (
        client.post(
            INFER, content=body, headers={"inference-header-content-length": "999999"}
        ).status_code
        == 400
    )
