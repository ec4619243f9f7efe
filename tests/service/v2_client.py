"""A minimal KServe v2 client codec for the tests (binary tensor data extension included)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

DTYPES = {"FP32": "<f4", "INT64": "<i8", "BOOL": "?"}


def bytes_request(blobs: list[bytes], binary: bool, **params: Any) -> tuple[bytes, dict[str, str]]:
    """An infer request with encoded images as a BYTES input, JSON (base64) or binary."""
    import base64

    tensor: dict[str, Any] = {"name": "image", "shape": [len(blobs)], "datatype": "BYTES"}
    extra: dict[str, Any] = {"parameters": params} if params else {}
    if not binary:
        tensor["data"] = [base64.b64encode(b).decode() for b in blobs]
        return json.dumps({"inputs": [tensor], **extra}).encode(), {"content-type": "application/json"}
    payload = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    tensor["parameters"] = {"binary_data_size": len(payload)}
    head = json.dumps({"inputs": [tensor], **extra}).encode()
    headers = {
        "inference-header-content-length": str(len(head)),
        "content-type": "application/octet-stream",
    }
    return head + payload, headers


def fp32_request(x: np.ndarray, binary: bool, **params: Any) -> tuple[bytes, dict[str, str]]:
    tensor: dict[str, Any] = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    extra: dict[str, Any] = {"parameters": params} if params else {}
    if not binary:
        tensor["data"] = x.flatten().tolist()
        return json.dumps({"inputs": [tensor], **extra}).encode(), {"content-type": "application/json"}
    payload = x.astype("<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(payload)}
    head = json.dumps({"inputs": [tensor], **extra}).encode()
    return head + payload, {"inference-header-content-length": str(len(head))}


def decode_response(body: bytes, headers: Any) -> dict[str, np.ndarray]:
    """Output name -> array, from a JSON or binary-extension response."""
    n = headers.get("inference-header-content-length")
    head, blob = (body[: int(n)], body[int(n) :]) if n is not None else (body, b"")
    out, offset = {}, 0
    for t in json.loads(head)["outputs"]:
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arr = np.asarray(t["data"], dtype=DTYPES[t["datatype"]])
        else:
            arr = np.frombuffer(blob[offset : offset + size], dtype=DTYPES[t["datatype"]])
            offset += size
        out[t["name"]] = arr.reshape(t["shape"])
    assert offset == len(blob)
    return out
