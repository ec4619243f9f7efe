"""KServe v2 tensors: the model's tensor contract, JSON data and the binary tensor data extension.

The contract (which inputs and outputs a model has, which request parameters set the options,
each output's values) is the protocol's, shared by its two transports: ``/v2`` over HTTP
(service/routes/v2.py) and gRPC (service/grpc/).

Binary extension (Triton's ``binary_tensor_data``, which KServe v2 clients speak): the body is a
JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors in input
order, each sized by its ``parameters.binary_data_size``. Fixed-size types are little-endian,
row-major; each ``BYTES`` element is a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any, get_args

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from models.package import Manifest
from service.engine import ImageResult
from service.errors import BadRequestError, validation_problems
from service.routes.http import parse_json
from service.schemas import (
    V2InferRequest,
    V2InputTensor,
    V2Output,
    V2OutputTensor,
    V2TensorMetadata,
)

HEADER = "inference-header-content-length"
PLATFORM = "anytime_early_exit"
# Every output but deadline_exit, which is sent on request or when the request has a deadline.
DEADLINE_OUTPUT = "deadline_exit"
OUTPUTS = tuple(n for n in get_args(V2Output) if n != DEADLINE_OUTPUT)
# The options a request's ``parameters`` may set (top_k is v1's: v2 returns every probability).
PARAMETERS = ("budget", "max_exit", "threshold", "deadline_ms")


def model_tensors(m: Manifest) -> tuple[list[V2TensorMetadata], list[V2TensorMetadata]]:
    """``(inputs, outputs)`` of a model: a request sends exactly one of the two inputs."""
    h, w = m.preprocessing.input_size
    inputs = [
        V2TensorMetadata(name="image", datatype="BYTES", shape=[-1]),
        V2TensorMetadata(name="input", datatype="FP32", shape=[-1, 3, h, w]),
    ]
    outputs = [
        V2TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(m.classes)]),
        V2TensorMetadata(name="class_index", datatype="INT64", shape=[-1]),
        V2TensorMetadata(name="exit", datatype="INT64", shape=[-1]),
        V2TensorMetadata(name="confidence", datatype="FP32", shape=[-1]),
        V2TensorMetadata(name="compute_fraction", datatype="FP32", shape=[-1]),
        V2TensorMetadata(name=DEADLINE_OUTPUT, datatype="BOOL", shape=[-1]),
    ]
    return inputs, outputs


def output_names(requested: list[str], with_deadline: bool) -> list[str]:
    """The outputs to send, in order: those requested, else every one (``deadline_exit`` only
    when the request had a deadline)."""
    if requested:
        return requested
    return [*OUTPUTS, DEADLINE_OUTPUT] if with_deadline else list(OUTPUTS)


def output_arrays(results: list[ImageResult]) -> dict[str, tuple[str, np.ndarray]]:
    """Each output's ``(datatype, array)``: ``probabilities [N, C]``, the others ``[N]``."""
    probs = np.stack([r.probs for r in results]).astype(np.float32)
    return {
        "probabilities": ("FP32", probs),
        "class_index": ("INT64", probs.argmax(axis=1).astype(np.int64)),
        "exit": ("INT64", np.array([r.exit for r in results], dtype=np.int64)),
        "confidence": ("FP32", probs.max(axis=1).astype(np.float32)),
        "compute_fraction": ("FP32", np.array([r.compute_fraction for r in results], dtype=np.float32)),
        DEADLINE_OUTPUT: ("BOOL", np.array([r.deadline_exit for r in results], dtype=np.bool_)),
    }


def raw_bytes(arr: np.ndarray) -> bytes:
    """A tensor's raw layout: little-endian, row-major (BOOL: one byte per element)."""
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def parse_infer_body(body: bytes, header_length: str | None) -> tuple[V2InferRequest, bytes]:
    """Split a v2 infer body into the parsed JSON request and the trailing binary data."""
    if header_length is not None:
        if not header_length.strip().isdecimal() or int(header_length) > len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length!r} is not a length within the body "
                f"of {len(body)} bytes"
            )
        n = int(header_length)
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    raw = parse_json(head, "inference request")
    try:
        return V2InferRequest.model_validate(raw), binary
    except ValidationError as e:
        raise BadRequestError(
            f"invalid inference request: {validation_problems(e.errors())[0]}"
        ) from None


def split_binary(inputs: list[V2InputTensor], binary: bytes) -> list[bytes | None]:
    """The raw bytes of each input that uses the binary extension (None for JSON ``data``)."""
    out: list[bytes | None] = []
    offset = 0
    for t in inputs:
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            out.append(None)
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequestError(
                f"input {t.name!r}: binary_data_size {size!r} does not fit the {len(binary)} "
                "bytes of binary data"
            )
        out.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise BadRequestError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return out


def _numel(shape: list[int], name: str) -> int:
    if any(d < 0 for d in shape):
        raise BadRequestError(f"input {name!r}: negative dimension in shape {shape}")
    return math.prod(shape)


def decode_bytes_tensor(t: V2InputTensor, raw: bytes | None) -> list[bytes]:
    """Elements of a ``BYTES`` input: length-prefixed binary, or base64 strings in JSON ``data``."""
    n = _numel(t.shape, t.name)
    items: list[bytes] = []
    if raw is not None:
        pos = 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise BadRequestError(f"input {t.name!r}: truncated BYTES element length")
            (size,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + size > len(raw):
                raise BadRequestError(f"input {t.name!r}: BYTES element runs past the binary data")
            items.append(raw[pos : pos + size])
            pos += size
    else:
        data = t.data
        if not isinstance(data, list) or not all(isinstance(x, str) for x in _flatten(data)):
            raise BadRequestError(f"input {t.name!r}: BYTES data must be a list of base64 strings")
        for i, text in enumerate(_flatten(data)):
            try:
                items.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as e:
                raise BadRequestError(
                    f"input {t.name!r}: element {i} is not valid base64: {e}"
                ) from None
    if len(items) != n:
        raise BadRequestError(f"input {t.name!r}: shape {t.shape} holds {n} elements, got {len(items)}")
    return items


def decode_fp32_tensor(t: V2InputTensor, raw: bytes | None) -> Tensor:
    """An ``FP32`` input as a tensor of its declared shape (finite values only)."""
    n = _numel(t.shape, t.name)
    if raw is not None:
        if len(raw) != 4 * n:
            raise BadRequestError(
                f"input {t.name!r}: shape {t.shape} needs {4 * n} bytes, got {len(raw)}"
            )
        arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        flat = list(_flatten(t.data)) if isinstance(t.data, list) else None
        if flat is None or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in flat):
            raise BadRequestError(f"input {t.name!r}: FP32 data must be a (nested) list of numbers")
        if len(flat) != n:
            raise BadRequestError(f"input {t.name!r}: shape {t.shape} holds {n} values, got {len(flat)}")
        try:
            arr = np.asarray(flat, dtype=np.float32)
        except OverflowError:  # an integer beyond what a float holds
            raise BadRequestError(f"input {t.name!r}: a value is out of FP32's range") from None
    x = torch.from_numpy(arr.copy()).reshape(t.shape)
    if not bool(torch.isfinite(x).all()):
        raise BadRequestError(f"input {t.name!r}: contains NaN or infinite values")
    return x


def _flatten(data: Any) -> Any:
    for x in data:
        if isinstance(x, list):
            yield from _flatten(x)
        else:
            yield x


def encode_outputs(
    outputs: list[tuple[str, str, np.ndarray]], binary: set[str]
) -> tuple[list[V2OutputTensor], bytes]:
    """Output tensors for the response; those named in ``binary`` go to the trailing bytes.

    Args:
        outputs: ``(name, datatype, array)`` in response order.
    """
    tensors, blobs = [], []
    for name, datatype, arr in outputs:
        shape = list(arr.shape)
        if name in binary:
            blob = raw_bytes(arr)
            blobs.append(blob)
            tensors.append(
                V2OutputTensor(
                    name=name, shape=shape, datatype=datatype, parameters={"binary_data_size": len(blob)}
                )
            )
        else:
            tensors.append(
                V2OutputTensor(name=name, shape=shape, datatype=datatype, data=arr.flatten().tolist())
            )
    return tensors, b"".join(blobs)
