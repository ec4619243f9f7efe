"""The gRPC API's .proto: its committed Python code is current, and its messages and RPCs are the
Open Inference Protocol's on the wire (the same as Triton's client's, field for field).

The service's generated module is never imported here: its messages and Triton's client's share
protobuf's global names (service/grpc/__init__.py). The .proto is compiled with grpcio-tools
instead, and the committed module's descriptor read from its source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = "service/grpc/grpc_service.proto"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    """The .proto as protoc reads it now."""
    out = tmp_path_factory.mktemp("proto") / "set.binpb"
    # protoc's include path resolves against the working directory: the repository root.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        assert protoc.main(["protoc", "-I.", f"--descriptor_set_out={out}", PROTO]) == 0
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return file


def _without_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    """Drop what protoc adds for JSON only (the generated Python code leaves it out)."""
    for f in message.field:
        f.ClearField("json_name")
    for nested in message.nested_type:
        _without_json_names(nested)


def _committed() -> descriptor_pb2.FileDescriptorProto:
    """The descriptor the committed grpc_service_pb2.py registers (its AddSerializedFile bytes)."""
    tree = ast.parse((ROOT / "service/grpc/grpc_service_pb2.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(node.args[0]))
    raise AssertionError("grpc_service_pb2.py registers no descriptor")


def _triton() -> descriptor_pb2.FileDescriptorProto:
    from tritonclient.grpc import service_pb2

    return descriptor_pb2.FileDescriptorProto.FromString(service_pb2.DESCRIPTOR.serialized_pb)


def _wire(message: descriptor_pb2.DescriptorProto) -> dict[str, object]:
    """What a message is on the wire: each field's number, type, label, message type and oneof,
    with its nested messages (map entries included)."""
    return {
        "fields": sorted(
            (f.name, f.number, f.type, f.label, f.type_name, f.HasField("oneof_index"))
            for f in message.field
        ),
        "nested": {n.name: _wire(n) for n in message.nested_type},
    }


def test_committed_code_is_generated_from_the_proto(
    compiled: descriptor_pb2.FileDescriptorProto,
) -> None:
    expected = descriptor_pb2.FileDescriptorProto()
    expected.CopyFrom(compiled)
    for message in expected.message_type:
        _without_json_names(message)
    # Stale code after an edit of the .proto: run `make proto`.
    assert _committed() == expected


def test_messages_match_the_protocol_on_the_wire(compiled: descriptor_pb2.FileDescriptorProto) -> None:
    triton = _triton()
    assert compiled.package == triton.package == "inference"
    theirs = {m.name: m for m in triton.message_type}
    assert len(compiled.message_type) == 21
    for message in compiled.message_type:
        assert message.name in theirs, message.name
        assert _wire(message) == _wire(theirs[message.name]), message.name


def test_rpcs_are_the_protocols(compiled: descriptor_pb2.FileDescriptorProto) -> None:
    (ours,) = compiled.service
    (theirs,) = _triton().service
    assert ours.name == theirs.name == "GRPCInferenceService"
    signatures = {m.name: (m.input_type, m.output_type) for m in theirs.method}
    assert {m.name: (m.input_type, m.output_type) for m in ours.method} == {
        name: signatures[name]
        for name in (
            "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "ModelInfer", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
        )
    }  # fmt: skip
