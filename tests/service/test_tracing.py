"""Request IDs (header, generated, the v2 id, log lines) and OpenTelemetry traces of one request."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.app import create_app
from service.logs import JsonFormatter, RequestIdFilter
from service.tracing import TracingConfigError, tracer_provider_from_env
from tests.service.conftest import make_settings
from tests.service.fixtures import NAME
from tests.service.traces import as_records, check_request_spans
from tests.service.v2_client import bytes_request

INFER = f"/v2/models/{NAME}/infer"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler, root = Records(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_request_ids_are_taken_made_returned_and_logged(
    client: TestClient, images: list[bytes], records: Records
) -> None:
    body, headers = bytes_request(images[:2], binary=False)
    r = client.post(INFER, content=body, headers={**headers, "X-Request-ID": "rid-given.1"})
    assert r.headers["x-request-id"] == "rid-given.1"
    serving = [rec for rec in records.records if rec.name == "service.serving"]
    assert len(serving) == 2 and {rec.request_id for rec in serving} == {"rid-given.1"}  # type: ignore[attr-defined]
    made = client.get("/v1/models").headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0  # a fresh uuid4
    forged = client.get("/v1/models", headers={"X-Request-ID": "a b\nINFO fake line"})
    assert forged.headers["x-request-id"] != "a b\nINFO fake line"
    # The v2 body's id names the request when no header does.
    tensor = json.loads(body)["inputs"]
    r = client.post(INFER, json={"id": "v2-id-7", "inputs": tensor})
    assert r.headers["x-request-id"] == "v2-id-7" and r.json()["id"] == "v2-id-7"
    line = JsonFormatter().format(serving[0])
    assert json.loads(line)["request_id"] == "rid-given.1"


def test_one_request_traced_from_decode_to_its_exits(
    calibrated_package: Path, images: list[bytes]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(make_settings(calibrated_package), tracer_provider=provider)
    body, headers = bytes_request(images[:8], binary=False, budget=0.6)
    with TestClient(app) as c:
        r = c.post(INFER, content=body, headers={**headers, "X-Request-ID": "traced-1"})
    assert r.status_code == 200
    exits = next(o["data"] for o in r.json()["outputs"] if o["name"] == "exit")
    assert set(exits) == {0, 1, 2}  # budget 0.6 uses every exit on these images
    spans = as_records(exporter.get_finished_spans())
    server = next(s for s in spans if s["name"] == f"POST {INFER.replace(NAME, '{name}')}")
    assert server["attributes"]["anytime.request_id"] == "traced-1"
    check_request_spans(spans, server, exits)


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert tracer_provider_from_env({}) is None
    assert tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    on = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert tracer_provider_from_env(on) is None
    for name in ("console", "otlp"):
        provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": name})
        assert provider is not None
        provider.shutdown()
    with pytest.raises(TracingConfigError, match="'zipkin' is not installed; installed: "):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
