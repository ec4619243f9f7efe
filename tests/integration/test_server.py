"""The service over real HTTP against real uvicorn processes (see conftest.py for the servers)."""

from __future__ import annotations

import base64
import io
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from models.package import ModelPackage
from tests.integration.conftest import API_KEY, Server
from tests.service.fixtures import NAME, encode, png_with_claimed_size, reference_answers
from tests.service.v2_client import bytes_request, decode_response
from tests.tools import require_binary

URL = f"/v1/models/{NAME}/classify"
KEY = {"x-api-key": API_KEY}


def batch_stats(server: Server, headers: dict[str, str] | None = None) -> dict[str, tuple[float, float]]:
    """Stage -> (number of runs, images run), from the batch-size histogram."""
    m = server.metrics(headers)
    out = {}
    for stage in ("0", "1", "2"):
        labels = (("model", NAME), ("stage", stage), ("version", "1"))
        out[stage] = (
            m.get(("anytime_batch_size_count", labels), 0.0),
            m.get(("anytime_batch_size_sum", labels), 0.0),
        )
    return out


def post_png(client: httpx.Client, blob: bytes, **params: float) -> httpx.Response:
    return client.post(URL, content=blob, headers={"content-type": "image/png"}, params=params)


def test_concurrent_requests_are_batched(servers: dict[str, Server], images: list[bytes]) -> None:
    server = servers["torch"]
    before = batch_stats(server)

    def one(blob: bytes) -> httpx.Response:
        with server.client() as c:
            return post_png(c, blob, budget=1.0)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, images[:16]))
    assert all(r.status_code == 200 for r in responses)
    after = batch_stats(server)
    runs, imgs = after["0"][0] - before["0"][0], after["0"][1] - before["0"][1]
    assert imgs == 16
    assert runs < 16, "16 concurrent single-image requests should share stage-0 batches"


def test_mixed_budgets_share_batches_that_shrink_at_exits(
    servers: dict[str, Server], images: list[bytes], reference_package: ModelPackage
) -> None:
    server = servers["torch"]
    before = batch_stats(server)
    budgets = [0.6, 0.8, 1.0, 0.6]
    images = images[:12]

    def one(budget: float) -> httpx.Response:
        files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
        with server.client() as c:
            return c.post(URL, files=files, params={"budget": budget})

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(one, budgets))
    after = batch_stats(server)
    for budget, r in zip(budgets, responses, strict=True):
        assert r.status_code == 200, r.text
        want = reference_answers(
            reference_package, images, reference_package.manifest.budget_entry(budget).thresholds
        )
        got = r.json()["predictions"]
        assert [p["exit"] for p in got] == [w.exit for w in want]
        assert [p["class_index"] for p in got] == [w.class_index for w in want]
    delta = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}
    assert delta["0"][1] == 4 * len(images)
    assert delta["0"][0] < 4, "requests with different budgets should have shared a batch"
    assert 0 < delta["2"][1] < delta["1"][1] < delta["0"][1], (
        f"the batch should shrink at each exit: {delta}"
    )


def test_torch_and_onnxruntime_servers_agree(servers: dict[str, Server], images: list[bytes]) -> None:
    ra, rb = [], []
    with servers["torch"].client() as a, servers["ort"].client(headers=KEY) as b:
        for start in range(0, 16, 4):  # the ort server's queue holds 4 images
            files = [
                ("files", (f"{i}.png", x, "image/png")) for i, x in enumerate(images[start : start + 4])
            ]
            ra += a.post(URL, files=files, params={"budget": 0.6, "top_k": 10}).json()["predictions"]
            rb += b.post(URL, files=files, params={"budget": 0.6, "top_k": 10}).json()["predictions"]
    assert len({p["exit"] for p in ra}) > 1, "the comparison should cover more than one exit"
    assert [p["exit"] for p in ra] == [p["exit"] for p in rb]
    assert [p["class_index"] for p in ra] == [p["class_index"] for p in rb]
    pa = np.array(
        [[t["probability"] for t in sorted(p["top_k"], key=lambda t: t["class_index"])] for p in ra]
    )
    pb = np.array(
        [[t["probability"] for t in sorted(p["top_k"], key=lambda t: t["class_index"])] for p in rb]
    )
    np.testing.assert_allclose(pa, pb, atol=1e-4)
    with servers["ort"].client(headers=KEY) as c:
        info = c.get("/metrics").text
    assert 'backend="onnxruntime",device="cpu"' in info


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_infer_over_http(servers: dict[str, Server], images: list[bytes], binary: bool) -> None:
    body, headers = bytes_request(images[:3], binary, budget=1.0, binary_data_output=binary)
    with servers["ort"].client(headers=KEY) as c:
        r = c.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
        assert c.get("/v2/health/ready").status_code == 200
    assert r.status_code == 200, r.text
    out = decode_response(r.content, r.headers)
    assert out["exit"].tolist() == [2, 2, 2]
    assert out["probabilities"].shape == (3, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


def test_a_full_queue_answers_429_with_retry_after(
    servers: dict[str, Server], images: list[bytes]
) -> None:
    server = servers["ort"]
    blob = base64.b64encode(images[0]).decode()
    with server.client(headers=KEY) as c:
        r = c.post(URL, json={"images": [blob] * 5})  # the queue holds 4 images
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert c.post(URL, json={"images": [blob] * 4}).status_code == 200
    labels = (("model", NAME), ("reason", "queue_full"), ("version", "1"))
    assert server.metrics(KEY)[("anytime_rejections_total", labels)] >= 1


def test_metrics_of_a_loaded_server_pass_promtool(
    servers: dict[str, Server], images: list[bytes]
) -> None:
    promtool = require_binary("promtool", "prometheus")
    for server in servers.values():
        with server.client(headers=KEY) as c:
            post_png(c, images[0])
            text = c.get("/metrics").text
        check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_a_missed_deadline_answers_504(servers: dict[str, Server], images: list[bytes]) -> None:
    server = servers["deadline"]
    with server.client() as c:
        r = post_png(c, images[0])
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert (
        server.metrics()[
            ("anytime_rejections_total", (("model", NAME), ("reason", "deadline"), ("version", "1")))
        ]
        >= 1
    )


def test_api_keys_over_http(servers: dict[str, Server], images: list[bytes]) -> None:
    with servers["ort"].client() as c:
        assert post_png(c, images[0]).status_code == 401
        r = c.post(
            URL,
            content=images[0],
            headers={"content-type": "image/png", "authorization": f"Bearer {API_KEY}"},
        )
        assert r.status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/v2/health/live").status_code == 200


def _bad_corpus() -> list[tuple[str, dict, int]]:
    jpeg = encode(Image.new("RGB", (64, 64), (9, 99, 199)), "JPEG")

    def raw(blob: bytes, ctype: str = "image/png", **extra: object) -> dict:
        return dict(content=blob, headers={"content-type": ctype}, **extra)

    many = [base64.b64encode(jpeg).decode()] * 65
    return [
        ("non-image bytes", raw(b"MZ\x90\x00 not an image"), 400),
        ("truncated jpeg", raw(jpeg[: len(jpeg) // 3], "image/jpeg"), 400),
        ("empty body", raw(b""), 400),
        ("huge claimed size", raw(png_with_claimed_size(30_000, 30_000)), 413),
        ("bad base64", dict(json={"images": ["@@not-base64@@"]}), 400),
        ("wrong content type", raw(jpeg, "text/csv"), 415),
        ("no content type", dict(content=jpeg), 415),
        ("too many images", dict(json={"images": many}), 413),
        ("broken json", raw(b'{"images": [', "application/json"), 400),
        ("bad option", raw(jpeg, "image/jpeg", params={"budget": "lots"}), 422),
        ("png with alpha", raw(encode(Image.new("RGBA", (20, 20), (1, 2, 3, 0)))), 200),
        ("grayscale", raw(encode(Image.new("L", (31, 17), 77))), 200),
        ("1x1", raw(encode(Image.new("RGB", (1, 1)))), 200),
    ]


def test_bad_input_corpus_then_the_server_still_answers_correctly(
    servers: dict[str, Server], images: list[bytes], reference_package: ModelPackage
) -> None:
    server = servers["torch"]
    want = reference_answers(
        reference_package, images[:2], reference_package.manifest.budget_entry(0.6).thresholds
    )
    with server.client() as c:
        for label, kwargs, status in _bad_corpus():
            r = c.post(URL, **kwargs)
            assert r.status_code == status, f"{label}: {r.status_code} {r.text}"
            body = r.json()
            if status != 200:
                assert set(body["error"]) == {"code", "message", "detail"}, label
                assert "Traceback" not in r.text
            else:
                assert len(body["predictions"]) == 1
        files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images[:2])]
        good = c.post(URL, files=files).json()["predictions"]
    assert [(p["exit"], p["class_index"]) for p in good] == [(w.exit, w.class_index) for w in want]
    m = server.metrics()
    assert not any(
        k[0] == "anytime_request_duration_seconds_count" and ("status", "500") in k[1] for k in m
    )
    assert server.proc.poll() is None


def test_image_body_over_the_byte_limit_is_413(servers: dict[str, Server]) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")  # ~12 MB, over the 8 MiB per-image limit
    with servers["torch"].client() as c:
        r = post_png(c, buf.getvalue())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
