"""Request IDs in a real server's JSON logs: every line a request causes carries its ID."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.integration.conftest import launch, wait_ready
from tests.service.fixtures import NAME
from tests.service.v2_client import bytes_request


def test_every_log_line_of_a_request_names_it(
    calibrated_package: Path, tmp_path: Path, images: list[bytes]
) -> None:
    proc = launch(
        calibrated_package, tmp_path, "json", "--json-logs", "--log-level", "debug", "--backend", "torch"
    )
    server = wait_ready(proc)
    try:
        body, headers = bytes_request(images[:3], binary=True)
        headers["X-Request-ID"] = "it-42"
        with server.client() as c:
            r = c.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
            assert r.status_code == 200 and r.headers["x-request-id"] == "it-42"
            other = c.get(f"/v1/models/{NAME}").headers["x-request-id"]
        time.sleep(0.5)  # the access line is written after the response
        lines = [json.loads(x) for x in server.logs().splitlines() if x.startswith("{")]
    finally:
        server.stop()
    ours = [x for x in lines if x.get("request_id") == "it-42"]
    # Its serving lines, its access line, and what the decoding thread logged (PIL, at debug).
    assert {x["logger"] for x in ours} >= {"service.serving", "uvicorn.access", "PIL.PngImagePlugin"}
    assert len([x for x in ours if x["logger"] == "service.serving"]) == 2
    # Every line written while serving a request carries the ID of its request.
    per_request = [x for x in lines if x["logger"] in ("service.serving", "uvicorn.access")]
    assert per_request and all(x.get("request_id") for x in per_request)
    assert any(x.get("request_id") == other for x in per_request)
