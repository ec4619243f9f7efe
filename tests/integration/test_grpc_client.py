"""The gRPC API through Triton's own gRPC client against real servers (see conftest.py): the
Open Inference Protocol's ``GRPCInferenceService``, answering as ``/v2`` does.

Typed tensor contents and trailing metadata, which ``tritonclient.grpc`` never sends or shows,
go through the client's generated stub (its ``service_pb2``) directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from models.package import ModelPackage
from service.images import images_to_batch
from tests.integration.conftest import API_KEY, Server
from tests.service.fixtures import LIMITS, NAME, reference_answers

RPC = "/inference.GRPCInferenceService"


def _client(server: Server) -> triton.InferenceServerClient:
    assert server.grpc is not None
    return triton.InferenceServerClient(server.grpc)


@pytest.fixture(scope="module")
def client(servers: dict[str, Server]) -> Iterator[triton.InferenceServerClient]:
    c = _client(servers["torch"])
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(servers: dict[str, Server]) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    assert servers["torch"].grpc is not None
    with grpc.insecure_channel(servers["torch"].grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _image_input(blobs: list[bytes]) -> triton.InferInput:
    inp = triton.InferInput("image", [len(blobs)], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return inp


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert client.get_server_metadata().name == "anytime"
    meta = client.get_model_metadata(NAME, as_json=True)
    assert meta["name"] == NAME and meta["platform"] == "anytime_early_exit"
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "input": "FP32"}
    assert {o["name"] for o in meta["outputs"]} == {
        "probabilities", "class_index", "exit", "confidence", "compute_fraction", "deadline_exit"
    }  # fmt: skip
    with pytest.raises(InferenceServerException) as e:
        client.is_model_ready("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_infer_jpeg_bytes_under_a_budget_gives_the_reference_answers(
    client: triton.InferenceServerClient, reference_package: ModelPackage, images: list[bytes]
) -> None:
    blobs = images[:5]
    outputs = [triton.InferRequestedOutput(n) for n in ("exit", "probabilities", "compute_fraction")]
    result = client.infer(NAME, [_image_input(blobs)], outputs=outputs, parameters={"budget": 0.6})
    want = reference_answers(
        reference_package, blobs, reference_package.manifest.budget_entry(0.6).thresholds
    )
    assert result.as_numpy("exit").tolist() == [w.exit for w in want]
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), np.stack([w.probs.numpy() for w in want]), atol=1e-4
    )
    fractions = reference_package.manifest.exits
    np.testing.assert_allclose(
        result.as_numpy("compute_fraction"),
        [fractions[w.exit].compute_fraction for w in want],
        rtol=1e-5,
    )
    assert result.as_numpy("confidence") is None  # only the requested outputs
    assert result.get_response().model_version == reference_package.manifest.version


def test_every_output_by_default_and_deadline_exit_under_a_grpc_deadline(
    client: triton.InferenceServerClient, images: list[bytes]
) -> None:
    result = client.infer(NAME, [_image_input(images[:2])], parameters={"max_exit": 0})
    assert [o.name for o in result.get_response().outputs] == [
        "probabilities", "class_index", "exit", "confidence", "compute_fraction"
    ]  # fmt: skip
    assert result.as_numpy("exit").tolist() == [0, 0]
    probs = result.as_numpy("probabilities")
    assert result.as_numpy("class_index").tolist() == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose(result.as_numpy("confidence"), probs.max(axis=1))
    # The client's deadline reaches the server: the request runs under it, as under deadline_ms.
    timed = client.infer(NAME, [_image_input(images[:2])], client_timeout=30)
    assert timed.as_numpy("deadline_exit").tolist() == [False, False]


def test_typed_contents_and_raw_preprocessed_input(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    reference_package: ModelPackage,
    images: list[bytes],
) -> None:
    blobs = images[:3]
    want = [w.exit for w in reference_answers(reference_package, blobs, [0.0] * 3)]
    exit0 = {"threshold": pb.InferParameter(double_param=0.0)}  # every image leaves at exit 0
    typed = pb.ModelInferRequest(model_name=NAME, parameters=exit0, id="typed")
    typed.inputs.add(name="image", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(blobs)
    typed.outputs.add(name="exit")
    x = images_to_batch(blobs, reference_package.manifest.preprocessing, LIMITS).numpy()
    raw = pb.ModelInferRequest(model_name=NAME, parameters=exit0, raw_input_contents=[x.tobytes()])
    raw.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    raw.outputs.add(name="exit")
    fp32 = pb.ModelInferRequest(model_name=NAME, parameters=exit0)
    fp32.inputs.add(name="input", datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(
        x.ravel().tolist()
    )
    fp32.outputs.add(name="exit")
    for request in (typed, raw, fp32):
        resp = stub.ModelInfer(request)
        (out,) = resp.outputs
        assert (out.name, out.datatype, list(out.shape)) == ("exit", "INT64", [3])
        assert np.frombuffer(resp.raw_output_contents[0], "<i8").tolist() == want == [0, 0, 0]
    assert stub.ModelInfer(typed).id == "typed"


@pytest.mark.parametrize(
    ("model", "parameters", "code", "message"),
    [
        ("nope", {}, "NOT_FOUND", f"model 'nope' is not served here; served: ['{NAME}']"),
        (NAME, {"budget": 0.3}, "INVALID_ARGUMENT", "use a budget between 0.6 and 1.0"),
        (NAME, {"max_exit": 7}, "INVALID_ARGUMENT", "max_exit must be in 0..2 for this model, got 7"),
        (NAME, {"budget": "all"}, "INVALID_ARGUMENT", "budget: Input should be a valid number"),
    ],
)
def test_errors_reach_the_client_as_status_codes_with_v2s_messages(
    client: triton.InferenceServerClient,
    images: list[bytes],
    model: str,
    parameters: dict,
    code: str,
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, [_image_input(images[:1])], parameters=parameters)
    assert e.value.status() == f"StatusCode.{code}" and message in e.value.message()


def test_bad_tensors_are_invalid_arguments(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    cases = {
        "holds 2 elements, got 1": ("image", "BYTES", [2], _bytes_tensor([b"x"])),
        "truncated BYTES element length": ("image", "BYTES", [1], b"x"),
        "image 0 is not a recognised image format": (
            "image",
            "BYTES",
            [1],
            _bytes_tensor([b"not an image"]),
        ),
        "Input should be 'BYTES' or 'FP32'": ("image", "INT8", [1], b"\x00"),
        "needs 12288 bytes, got 4": ("input", "FP32", [1, 3, 32, 32], b"\x00" * 4),
    }
    for message, (name, datatype, shape, raw) in cases.items():
        request = pb.ModelInferRequest(model_name=NAME, raw_input_contents=[raw])
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in e.value.details(), e.value.details()


def test_a_missed_deadline_is_deadline_exceeded(servers: dict[str, Server], images: list[bytes]) -> None:
    with _client(servers["deadline"]) as c, pytest.raises(InferenceServerException) as e:
        c.infer(NAME, [_image_input(images[:1])])  # the server's request_timeout_s is 1 ms
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "no answer within the request deadline of 0.001 s" in e.value.message()


def test_a_full_queue_is_resource_exhausted_with_retry_after(
    servers: dict[str, Server], images: list[bytes]
) -> None:
    server = servers["ort"]  # its queue holds 4 images
    assert server.grpc is not None
    request = pb.ModelInferRequest(model_name=NAME, raw_input_contents=[_bytes_tensor(images[:5])])
    request.inputs.add(name="image", datatype="BYTES", shape=[5])
    with grpc.insecure_channel(server.grpc) as channel:
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        with pytest.raises(grpc.RpcError) as e:
            infer(request, metadata=[("x-api-key", API_KEY)])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "1") in tuple(e.value.trailing_metadata())


def test_api_keys_as_metadata(servers: dict[str, Server], images: list[bytes]) -> None:
    with _client(servers["ort"]) as c:
        assert c.is_server_live() and c.is_server_ready()  # health stays open, as over HTTP
        for call in (
            lambda **h: c.get_model_metadata(NAME, **h),
            lambda **h: c.infer(NAME, [_image_input(images[:1])], **h),
        ):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException) as e:
                call(headers={"x-api-key": "wrong"})
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            call(headers={"x-api-key": API_KEY})
            call(headers={"authorization": f"Bearer {API_KEY}"})


def test_rpcs_are_counted_in_the_http_request_metrics(
    servers: dict[str, Server], client: triton.InferenceServerClient, images: list[bytes]
) -> None:
    server = servers["torch"]

    def count(model: str, version: str, status: str) -> float:
        labels = (
            ("model", model),
            ("route", f"{RPC}/ModelInfer"),
            ("status", status),
            ("version", version),
        )
        return server.metrics().get(("anytime_request_duration_seconds_count", labels), 0.0)

    ok, missing = count(NAME, "1", "200"), count("unknown", "", "404")
    client.infer(NAME, [_image_input(images[:1])])
    with pytest.raises(InferenceServerException):
        client.infer("nope", [_image_input(images[:1])])
    assert (count(NAME, "1", "200"), count("unknown", "", "404")) == (ok + 1, missing + 1)


def test_request_ids_come_back_as_metadata(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, images: list[bytes]
) -> None:
    request = pb.ModelInferRequest(model_name=NAME, id="from-the-body")
    request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        images[0]
    )
    _, call = stub.ModelInfer.with_call(request)
    assert ("x-request-id", "from-the-body") in tuple(call.trailing_metadata())
    _, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "from-metadata")])
    assert ("x-request-id", "from-metadata") in tuple(call.trailing_metadata())
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(pb.ModelInferRequest(model_name="nope"), metadata=[("x-request-id", "err-1")])
    assert ("x-request-id", "err-1") in tuple(e.value.trailing_metadata())


def _bytes_tensor(blobs: list[bytes]) -> bytes:
    """A BYTES tensor's raw layout: each element's 4-byte little-endian length, then its bytes."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in blobs)
