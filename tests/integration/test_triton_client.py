"""The /v2 routes through Triton's own HTTP client against a real server (Open Inference Protocol)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from models.package import ModelPackage
from service.images import images_to_batch
from tests.integration.conftest import Server
from tests.service.fixtures import LIMITS, NAME, reference_answers


@pytest.fixture(scope="module")
def client(servers: dict[str, Server]) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=servers["torch"].url.removeprefix("http://"))


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(NAME)
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "input": "FP32"}
    assert not client.is_model_ready("nope")


# Encoded images go as binary data: Triton's JSON BYTES are UTF-8 strings (ours are base64).
@pytest.mark.parametrize(
    ("kind", "binary"), [("BYTES", True), ("FP32", True), ("FP32", False)], ids=["bytes", "fp32", "json"]
)
def test_infer_gives_the_reference_answers(
    client: triton.InferenceServerClient,
    reference_package: ModelPackage,
    images: list[bytes],
    kind: str,
    binary: bool,
) -> None:
    blobs = images[:5]
    if kind == "BYTES":
        inp = triton.InferInput("image", [len(blobs)], "BYTES")
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_), binary_data=binary)
    else:
        x = images_to_batch(blobs, reference_package.manifest.preprocessing, LIMITS).numpy()
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("exit", "probabilities")]
    result = client.infer(NAME, [inp], outputs=outputs, parameters={"budget": 0.6})
    want = reference_answers(
        reference_package, blobs, reference_package.manifest.budget_entry(0.6).thresholds
    )
    assert result.as_numpy("exit").tolist() == [w.exit for w in want]
    probs = result.as_numpy("probabilities")
    np.testing.assert_allclose(probs, np.stack([w.probs.numpy() for w in want]), atol=1e-4)
    assert result.as_numpy("confidence") is None  # only the requested outputs


@pytest.mark.parametrize(
    ("model", "parameters", "status", "message"),
    [
        ("nope", {}, "404", f"model 'nope' is not served here; served: ['{NAME}']"),
        (NAME, {"budget": 0.3}, "422", "use a budget between 0.6 and 1.0"),
        (NAME, {"max_exit": 7}, "422", "max_exit must be in 0..2 for this model, got 7"),
        (NAME, {"budget": "all"}, "422", "budget: Input should be a valid number"),
    ],
)
def test_errors_reach_the_client_as_protocol_messages(
    client: triton.InferenceServerClient,
    images: list[bytes],
    model: str,
    parameters: dict,
    status: str,
    message: str,
) -> None:
    inp = triton.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array(images[:1], dtype=np.object_))
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, [inp], parameters=parameters)
    # The client reads the protocol's {"error": "<message>"}: the message arrives as a string.
    assert e.value.status() == status
    assert isinstance(e.value.message(), str) and message in e.value.message()
