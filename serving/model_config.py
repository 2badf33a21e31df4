"""Triton's model configuration, which V2 clients such as tritonclient read (``get_model_config``).

KServe's servers do not implement it; clipsync derives it from the model's tensor metadata (the same inputs and
outputs as ``GET /v2/models/<name>``): ``GET /v2/models/<name>/config`` (JSON) and the gRPC method
``inference.GRPCInferenceService/ModelConfig``. The gRPC messages are the subset of Triton's ``model_config.proto``
and ``grpc_service.proto`` clipsync fills (same package, message names and field numbers, so tritonclient's own
classes parse them), built here from a descriptor instead of generated code.
"""

from __future__ import annotations

from typing import Any

#: V2 tensor datatype -> Triton's ``DataType`` enum name (``BYTES`` is ``TYPE_STRING``).
DATA_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
#: Triton's ``DataType`` enum values (model_config.proto).
TYPE_NUMBERS = {
    "TYPE_INVALID": 0,
    "TYPE_BOOL": 1,
    "TYPE_UINT8": 2,
    "TYPE_UINT16": 3,
    "TYPE_UINT32": 4,
    "TYPE_UINT64": 5,
    "TYPE_INT8": 6,
    "TYPE_INT16": 7,
    "TYPE_INT32": 8,
    "TYPE_INT64": 9,
    "TYPE_FP16": 10,
    "TYPE_FP32": 11,
    "TYPE_FP64": 12,
    "TYPE_STRING": 13,
}
PLATFORM = "clipsync"


def model_config(model: Any) -> dict[str, Any]:
    """The configuration of a loaded model (Triton's JSON form: ``input``/``output`` with ``data_type``, ``dims``)."""

    def tensors(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": t["name"], "data_type": DATA_TYPES[t["datatype"]], "dims": list(t["shape"])} for t in specs]

    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "python",
        "max_batch_size": 0,
        "input": tensors(model.get_input_types()),
        "output": tensors(model.get_output_types()),
    }


def _grpc_messages() -> tuple[Any, Any]:
    """``ModelConfigRequest`` and ``ModelConfigResponse`` classes (package ``inference``) in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="clipsync/model_config.proto", package="inference", syntax="proto3")
    enum = proto.enum_type.add(name="DataType")
    for name, number in TYPE_NUMBERS.items():
        enum.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, int, str, bool]]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    message("ModelConfigRequest", [("name", 1, f.TYPE_STRING, "", False), ("version", 2, f.TYPE_STRING, "", False)])
    for name, dims_number in (("ModelInput", 4), ("ModelOutput", 3)):
        message(
            name,
            [
                ("name", 1, f.TYPE_STRING, "", False),
                ("data_type", 2, f.TYPE_ENUM, ".inference.DataType", False),
                ("dims", dims_number, f.TYPE_INT64, "", True),
            ],
        )
    message(
        "ModelConfig",
        [
            ("name", 1, f.TYPE_STRING, "", False),
            ("platform", 2, f.TYPE_STRING, "", False),
            ("max_batch_size", 4, f.TYPE_INT32, "", False),
            ("input", 5, f.TYPE_MESSAGE, ".inference.ModelInput", True),
            ("output", 6, f.TYPE_MESSAGE, ".inference.ModelOutput", True),
            ("backend", 17, f.TYPE_STRING, "", False),
        ],
    )
    message("ModelConfigResponse", [("config", 1, f.TYPE_MESSAGE, ".inference.ModelConfig", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    request, response = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name in ("ModelConfigRequest", "ModelConfigResponse")
    )
    return request, response


ModelConfigRequest, ModelConfigResponse = _grpc_messages()


def model_config_response(model: Any) -> Any:
    """The gRPC ``ModelConfigResponse`` of a loaded model."""
    return ModelConfigResponse(config=model_config(model))
