"""The v1 REST API through TestClient: the three body forms, options, and the error envelope."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from models.package import ModelPackage
from service.app import create_app
from tests.service.conftest import make_settings
from tests.service.fixtures import NAME, reference_answers

URL = f"/v1/models/{NAME}/classify"


def assert_same(a: list[dict], b: list[dict]) -> None:
    """Same exits and classes; confidences equal up to batch-size float noise."""
    assert [(p["exit"], p["class_index"]) for p in a] == [(p["exit"], p["class_index"]) for p in b]
    assert [p["confidence"] for p in a] == pytest.approx([p["confidence"] for p in b], abs=1e-5)


def test_list_and_describe_models(client: TestClient, reference_package: ModelPackage) -> None:
    body = client.get("/v1/models").json()
    assert [m["name"] for m in body["models"]] == [NAME]
    one = client.get(f"/v1/models/{NAME}").json()
    assert one == body["models"][0]
    m = reference_package.manifest
    assert one["num_exits"] == 3 and one["default_budget"] == 0.6
    assert [e["flops"] for e in one["exits"]] == [e.flops for e in m.exits]
    assert [b["budget"] for b in one["budgets"]] == [0.6, 0.8, 1.0]
    assert one["classes"] == m.classes


def test_three_body_forms_give_the_reference_answers(
    client: TestClient, reference_package: ModelPackage, images: list[bytes]
) -> None:
    blobs = images[:5]
    multipart = client.post(
        URL, files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    )
    as_json = client.post(URL, json={"images": [base64.b64encode(b).decode() for b in blobs]})
    raw = [client.post(URL, content=b, headers={"content-type": "image/png"}) for b in blobs]
    assert multipart.status_code == as_json.status_code == 200
    preds = multipart.json()["predictions"]
    assert_same(preds, as_json.json()["predictions"])
    assert_same(preds, [r.json()["predictions"][0] for r in raw])
    assert multipart.json()["budget"] == 0.6
    want = reference_answers(
        reference_package, blobs, reference_package.manifest.budget_entry(0.6).thresholds
    )
    for p, w in zip(preds, want, strict=True):
        assert (p["exit"], p["class_index"]) == (w.exit, w.class_index)
        assert p["confidence"] == pytest.approx(float(w.probs.max()), abs=1e-5)
        assert p["compute_fraction"] == reference_package.manifest.exits[w.exit].compute_fraction
        assert p["class_name"] == f"class_{w.class_index}"


def test_options_budget_max_exit_threshold_top_k(client: TestClient, images: list[bytes]) -> None:
    blobs = {"images": [base64.b64encode(b).decode() for b in images[:6]]}
    full = client.post(URL, params={"budget": 1.0}, json=blobs).json()
    assert {p["exit"] for p in full["predictions"]} == {2}
    assert all(p["compute_fraction"] == 1.0 for p in full["predictions"])
    first = client.post(URL, json={**blobs, "max_exit": 0}).json()
    assert {p["exit"] for p in first["predictions"]} == {0}
    anything = client.post(URL, json={**blobs, "threshold": 0.0, "top_k": 3}).json()
    assert anything["budget"] is None
    for p in anything["predictions"]:
        assert p["exit"] == 0 and len(p["top_k"]) == 3
        probs = [t["probability"] for t in p["top_k"]]
        assert probs == sorted(probs, reverse=True) and p["confidence"] == probs[0]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"budget": 0}, "budget"), ({"budget": 2}, "budget"), ({"budget": "x"}, "budget"),
     ({"max_exit": 7}, "max_exit"), ({"threshold": -1}, "threshold"), ({"top_k": 0}, "top_k"),
     ({"bogus": 1}, "bogus"), ({"budget": 0.1}, "budget")],
)  # fmt: skip
def test_bad_options_are_422_envelopes(
    client: TestClient, images: list[bytes], params: dict, field: str
) -> None:
    r = client.post(URL, params=params, content=images[0], headers={"content-type": "image/png"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_option" and field in err["message"]


def test_unknown_model_and_route_are_404_envelopes(client: TestClient, images: list[bytes]) -> None:
    r = client.post("/v1/models/nope/classify", content=images[0], headers={"content-type": "image/png"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found" and NAME in r.json()["error"]["message"]
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (dict(content=b"", headers={"content-type": "image/png"}), 400, "bad_image"),
        (dict(content=b"GIF89a-broken", headers={"content-type": "image/gif"}), 400, "bad_image"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
        (dict(content=b"{", headers={"content-type": "application/json"}), 400, "bad_request"),
        (dict(json={"images": ["%%%not base64"]}), 400, "bad_image"),
        (dict(json={"images": []}), 400, "bad_request"),
        (dict(json={"pictures": []}), 400, "bad_request"),
        (dict(files=[("other", ("a.png", b"x", "image/png"))]), 400, "bad_request"),
    ],
)
def test_bad_bodies_get_the_right_status(
    client: TestClient, kwargs: dict, status: int, code: str
) -> None:
    r = client.post(URL, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert set(r.json()["error"]) == {"code", "message", "detail"}


def test_too_many_images_is_413(client: TestClient, images: list[bytes]) -> None:
    blob = base64.b64encode(images[0]).decode()
    r = client.post(URL, json={"images": [blob] * 65})
    assert r.status_code == 413 and "limit is 64" in r.json()["error"]["message"]
    r = client.post(URL, files=[("files", (f"{i}.png", images[0], "image/png")) for i in range(65)])
    assert r.status_code == 413 and "limit is 64" in r.json()["error"]["message"]
    r = client.post(URL, files=[("files", (f"{i}.png", images[0], "image/png")) for i in range(64)])
    assert r.status_code == 200 and len(r.json()["predictions"]) == 64


def test_malformed_multipart_is_400(client: TestClient) -> None:
    r = client.post(URL, content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_one_bad_image_spoils_only_its_own_request(client: TestClient, images: list[bytes]) -> None:
    bad = client.post(
        URL, files=[("files", ("a.png", images[0], "image/png")), ("files", ("b", b"xx", "image/png"))]
    )
    assert bad.status_code == 400 and "image 1" in bad.json()["error"]["message"]
    good = client.post(URL, content=images[0], headers={"content-type": "image/png"})
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1
    assert torch.isfinite(torch.tensor(good.json()["predictions"][0]["confidence"]))


def test_a_chunked_multipart_upload_is_refused_at_the_limit_not_after_it(
    calibrated_package: Path,
) -> None:
    # No Content-Length: the service must stop reading at max_body_bytes, not spool the whole
    # upload and look at its size afterwards. Driven at the ASGI level to count what was read.
    limit, chunk, parts = 2**20, b"\0" * 2**16, 1024  # 64 MiB if read to the end
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n'
    app = create_app(make_settings(calibrated_package, limits={"max_body_bytes": limit}))
    read, started = [0], []

    async def receive() -> dict[str, object]:
        body = head if read[0] == 0 else chunk
        read[0] += len(body)
        return {"type": "http.request", "body": body, "more_body": read[0] < parts * len(chunk)}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": URL, "raw_path": URL.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
    }  # fmt: skip
    with TestClient(app) as c:  # runs the lifespan: the model is loaded
        c.portal.call(app, scope, receive, send)  # type: ignore[arg-type]
    assert started == [413]
    assert read[0] <= limit + len(chunk) + len(head)  # stopped at the limit
