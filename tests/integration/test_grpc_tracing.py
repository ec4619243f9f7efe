"""A traced gRPC request against a real server: its server span carries the request ID and
continues the client's trace, and the serving layer's spans hang under it as under an HTTP
request's (tests/service/traces.py checks both)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import launch, wait_ready
from tests.integration.traced_server import SPANS_ENV
from tests.service.fixtures import NAME
from tests.service.traces import check_request_spans

RPC = "inference.GRPCInferenceService/ModelInfer"


def test_a_grpc_request_gets_a_server_span_with_the_serving_spans_under_it(
    calibrated_package: Path, tmp_path: Path, images: list[bytes]
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    proc = launch(
        calibrated_package,
        tmp_path,
        "traced",
        "--backend", "torch",
        module="tests.integration.traced_server",
        **{SPANS_ENV: str(spans_file)},
    )  # fmt: skip
    server = wait_ready(proc)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    inp = triton.InferInput("image", [8], "BYTES")
    inp.set_data_from_numpy(np.array(images[:8], dtype=np.object_))
    try:
        assert server.grpc is not None
        with triton.InferenceServerClient(server.grpc) as client:
            result = client.infer(
                NAME,
                [inp],
                parameters={"budget": 0.6},
                headers={
                    "x-request-id": "grpc-traced-1",
                    "traceparent": f"00-{trace_id}-{parent_id}-01",
                },
            )
            with pytest.raises(InferenceServerException):
                client.infer("nope", [inp], headers={"x-request-id": "grpc-missing"})
    finally:
        server.stop()
    exits = [int(e) for e in result.as_numpy("exit")]
    assert set(exits) == {0, 1, 2}  # budget 0.6 uses every exit on these images
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    served, missing = sorted((s for s in spans if s["name"] == RPC), key=lambda s: s["start_time"])
    assert served["kind"] == "SpanKind.SERVER"
    attributes = served["attributes"]
    assert attributes["anytime.request_id"] == "grpc-traced-1"
    assert (attributes["rpc.system"], attributes["rpc.method"]) == ("grpc", "ModelInfer")
    assert attributes["rpc.grpc.status_code"] == 0
    # The client's trace goes on through the server.
    assert served["context"]["trace_id"] == f"0x{trace_id}"
    assert served["parent_id"] == f"0x{parent_id}"
    check_request_spans(spans, served, exits)
    assert missing["attributes"]["anytime.request_id"] == "grpc-missing"
    assert missing["attributes"]["rpc.grpc.status_code"] == 5  # NOT_FOUND
    assert missing["status"]["status_code"] == "ERROR"
    assert "'nope'" in missing["status"]["description"]
    assert children_of(spans, missing) == []  # refused before any inference


def children_of(spans: list[dict], parent: dict) -> list[dict]:
    return [s for s in spans if s["parent_id"] == parent["context"]["span_id"]]
