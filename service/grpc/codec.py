"""Protobuf messages <-> the service's values, for the gRPC transport of the Open Inference
Protocol. The tensor contract and the tensor decoders are ``/v2``'s (service/routes/v2_codec.py):
typed ``contents`` are laid out as ``raw_input_contents`` (little-endian; each BYTES element a
4-byte length and its bytes), then decoded once, as ``/v2``'s binary data is.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError
from torch import Tensor

from models.package import Manifest
from service.errors import BadRequestError, validation_problems
from service.grpc import grpc_service_pb2 as pb
from service.repository.scan import ConfigError, ModelConfig, config_from_json
from service.routes.v2_codec import (
    DEADLINE_OUTPUT,
    OUTPUTS,
    PLATFORM,
    decode_bytes_tensor,
    decode_fp32_tensor,
    model_tensors,
    raw_bytes,
)
from service.schemas import V2InputTensor

KNOWN_OUTPUTS = (*OUTPUTS, DEADLINE_OUTPUT)


def parameter_values(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """Request parameters as Python values: bool, int, str or float (unset ones left out)."""
    out: dict[str, Any] = {}
    for name, p in params.items():
        kind = p.WhichOneof("parameter_choice")
        if kind is not None:
            out[name] = getattr(p, kind)
    return out


def request_images(req: pb.ModelInferRequest) -> list[bytes] | Tensor:
    """The request's one input: encoded images (``BYTES [N]``) or a preprocessed ``FP32
    [N, 3, H, W]`` tensor (400 naming what is wrong)."""
    if len(req.inputs) != 1:
        raise BadRequestError(f"the request must hold exactly one input, got {len(req.inputs)}")
    tensor = req.inputs[0]
    try:
        t = V2InputTensor(name=tensor.name, shape=list(tensor.shape), datatype=tensor.datatype)
    except ValidationError as e:
        problems = validation_problems(e.errors())[0]
        raise BadRequestError(f"input {tensor.name!r}: {problems}") from None
    raw = _raw_input(req, t)
    return decode_bytes_tensor(t, raw) if t.datatype == "BYTES" else decode_fp32_tensor(t, raw)


def _raw_input(req: pb.ModelInferRequest, t: V2InputTensor) -> bytes:
    has_contents = req.inputs[0].HasField("contents")
    if req.raw_input_contents:
        if len(req.raw_input_contents) != 1 or has_contents:
            raise BadRequestError(
                f"raw_input_contents must hold one entry per input and the input no contents; got "
                f"{len(req.raw_input_contents)} entries for 1 input"
                + (" that has contents too" if has_contents else "")
            )
        return req.raw_input_contents[0]
    contents = req.inputs[0].contents
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in contents.bytes_contents)
    return np.asarray(contents.fp32_contents, dtype="<f4").tobytes()


def check_outputs(requested: list[str]) -> None:
    """400 for a requested output this model does not have."""
    unknown = [n for n in requested if n not in KNOWN_OUTPUTS]
    if unknown:
        raise BadRequestError(f"unknown outputs {unknown}; the outputs are {list(KNOWN_OUTPUTS)}")


def infer_response(
    model: str,
    version: str,
    request_id: str,
    arrays: Mapping[str, tuple[str, np.ndarray]],
    names: list[str],
) -> pb.ModelInferResponse:
    """The response with outputs ``names`` of ``arrays`` (``name -> (datatype, values)``), their
    values in ``raw_output_contents`` (what Triton answers and its clients read)."""
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name in names:
        datatype, arr = arrays[name]
        resp.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        resp.raw_output_contents.append(raw_bytes(arr))
    return resp


def metadata_response(m: Manifest, versions: list[str]) -> pb.ModelMetadataResponse:
    """A model's metadata: its name, versions, the two inputs and the outputs of ``/v2``."""
    inputs, outputs = model_tensors(m)
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=m.name,
        versions=versions,
        platform=PLATFORM,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs],
    )


def load_config(params: Mapping[str, pb.ModelRepositoryParameter]) -> ModelConfig | None:
    """A load request's ``config`` parameter (Triton's JSON model config, e.g. a
    ``version_policy``), as ``/v2/repository``'s load reads it; other parameters are ignored."""
    if "config" not in params:
        return None
    p = params["config"]
    if p.WhichOneof("parameter_choice") != "string_param":
        raise BadRequestError("load parameter 'config' must be a JSON string")
    try:
        return config_from_json(p.string_param)
    except ConfigError as e:
        raise BadRequestError(str(e)) from None
