"""KServe v2 / Triton gRPC predict protocol (``inference.GRPCInferenceService``): decode
a ``ModelInferRequest`` into numpy arrays, encode outputs into a ``ModelInferResponse``,
and map errors to gRPC status codes. No Ray or HTTP framework is imported here.

The messages come from the ``tritonclient`` wheel (``tritonclient.grpc.service_pb2``),
so a stock ``tritonclient.grpc`` client and this server share one proto. Inputs arrive
either as typed ``contents`` or, as tritonclient sends them, as ``raw_input_contents``
(one buffer per input, little-endian; BYTES elements 4-byte little-endian length
prefixed, as in the REST binary extension). Outputs always go back as
``raw_output_contents``, which is what ``InferResult.as_numpy`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from serve_app.errors import InvalidInput, PayloadTooLarge, ServeAppError
from serve_app.protocol.limits import RequestLimits
from serve_app.protocol.oip import (
    BYTES_OBJECT_OVERHEAD,
    DATATYPES,
    datatype_of,
    decode_bytes_buffer,
    encode_bytes_buffer,
)

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Typed ``InferTensorContents`` field of each datatype (FP16 has none: raw only)."""

GRPC_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""HTTP status of a ``ServeAppError`` -> gRPC code (anything else: INTERNAL)."""


@dataclass(slots=True)
class GrpcRequest:
    """A decoded ``ModelInferRequest``."""

    model_name: str
    model_version: str | None
    id: str
    inputs: dict[str, np.ndarray]
    requested_outputs: list[str] | None
    """Output names the client asked for, in order; None: every output."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """The request's ``parameters`` as Python values (a pipeline's switch and
    ``timing`` read them, as they read the JSON request's)."""


PARAMETER_FIELDS = ("bool_param", "int64_param", "string_param", "double_param", "uint64_param")


def decode_parameters(parameters: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as plain values (``{"timing": True}``).

    Raises:
        InvalidInput: a parameter with no value set.
    """
    decoded: dict[str, Any] = {}
    for key, value in parameters.items():
        which = value.WhichOneof("parameter_choice")
        if which not in PARAMETER_FIELDS:
            raise InvalidInput(f"parameter {key!r} has no value")
        decoded[key] = getattr(value, which)
    return decoded


def grpc_status(exc: BaseException, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """The one mapper from an error to a gRPC status and message.

    Ours keep their message and get the code of their HTTP status (400/422
    INVALID_ARGUMENT, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE); anything
    else is INTERNAL with a message that names only the request id (no traceback)."""
    if isinstance(exc, ServeAppError):
        return GRPC_STATUS.get(exc.status_code, grpc.StatusCode.INTERNAL), exc.message
    return grpc.StatusCode.INTERNAL, f"internal error, request id {request_id}"


def _shape(tensor: Any, limits: RequestLimits) -> tuple[list[int], int]:
    shape = [int(d) for d in tensor.shape]
    return shape, limits.element_count(tensor.name, shape)


def _from_raw(
    name: str, datatype: str, shape: list[int], count: int, raw: bytes, limits: RequestLimits
) -> np.ndarray:
    if datatype == "BYTES":
        array = decode_bytes_buffer(memoryview(raw), count, name, limits.max_element_bytes)
        return array.reshape(shape)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: raw_input_contents has {len(raw)} bytes, shape {shape} of "
            f"{datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def _from_contents(
    tensor: Any, datatype: str, shape: list[int], count: int, limits: RequestLimits
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input {tensor.name!r}: {datatype} has no typed contents; send it in "
            "raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input {tensor.name!r}: shape {shape} needs {count} elements, got {len(values)} "
            f"in contents.{field}"
        )
    if datatype == "BYTES":
        for i, value in enumerate(values):
            if len(value) > limits.max_element_bytes:
                raise PayloadTooLarge(
                    f"input {tensor.name!r}: BYTES element {i} has {len(value)} bytes, above "
                    f"the limit of {limits.max_element_bytes} (http.limits.max_element_bytes)"
                )
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=DATATYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as e:
        raise InvalidInput(f"input {tensor.name!r}: contents do not fit {datatype}: {e}") from None


def _decoded_bytes(datatype: str, count: int, tensor: Any, raw: bytes | None) -> int:
    if datatype != "BYTES":
        return count * DATATYPES[datatype].itemsize
    content = len(raw) if raw is not None else sum(len(v) for v in tensor.contents.bytes_contents)
    return content + count * BYTES_OBJECT_OVERHEAD


def decode_infer_request(request: Any, limits: RequestLimits) -> GrpcRequest:
    """Decode a ``ModelInferRequest`` within ``limits`` (every declared size is checked
    before anything is allocated from it).

    Raises:
        InvalidInput: unknown datatype, duplicate or missing input, contents that do not
            match the shape, raw and typed contents mixed.
        PayloadTooLarge: a limit of ``http.limits`` exceeded.
    """
    if not request.inputs:
        raise InvalidInput("inference request has no inputs")
    if len(request.inputs) > limits.max_inputs:
        raise PayloadTooLarge(
            f"{len(request.inputs)} inputs, above the limit of {limits.max_inputs} "
            "(http.limits.max_inputs)"
        )
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} buffers for {len(request.inputs)} inputs "
            "(all inputs raw, or none)"
        )
    inputs: dict[str, np.ndarray] = {}
    total = 0
    for i, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"duplicate input {tensor.name!r}")
        if tensor.datatype not in DATATYPES:
            raise InvalidInput(
                f"input {tensor.name!r}: unknown datatype {tensor.datatype!r} "
                f"(one of {', '.join(DATATYPES)})"
            )
        if raw and tensor.HasField("contents"):
            raise InvalidInput(
                f"input {tensor.name!r}: contents given together with raw_input_contents"
            )
        shape, count = _shape(tensor, limits)
        buffer = raw[i] if raw else None
        total += _decoded_bytes(tensor.datatype, count, tensor, buffer)
        if total > limits.max_decoded_bytes:
            raise PayloadTooLarge(
                f"inputs decode to more than {limits.max_decoded_bytes} bytes "
                "(http.limits.max_decoded_bytes)"
            )
        if buffer is not None:
            array = _from_raw(tensor.name, tensor.datatype, shape, count, buffer, limits)
        else:
            array = _from_contents(tensor, tensor.datatype, shape, count, limits)
        inputs[tensor.name] = array
    wanted = [o.name for o in request.outputs] or None
    return GrpcRequest(
        model_name=request.model_name,
        model_version=request.model_version or None,
        id=request.id,
        inputs=inputs,
        requested_outputs=wanted,
        parameters=decode_parameters(request.parameters),
    )


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: GrpcRequest,
    outputs: dict[str, np.ndarray],
) -> Any:
    """Build a ``ModelInferResponse`` with every output in ``raw_output_contents``.

    Raises:
        InvalidInput: the client asked for an output the model does not have.
    """
    names = request.requested_outputs or list(outputs)
    unknown = sorted(set(names) - set(outputs))
    if unknown:
        raise InvalidInput(f"unknown output(s) requested: {unknown}; model has {sorted(outputs)}")
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id
    )
    for name in names:
        array = np.asarray(outputs[name])
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype_of(array)
        tensor.shape.extend(array.shape)
        if array.dtype == object:
            response.raw_output_contents.append(encode_bytes_buffer(array))
        else:
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            response.raw_output_contents.append(little.tobytes())
    return response


def metadata_response(metadata: dict[str, Any]) -> Any:
    """A ``ModelMetadataResponse`` from the OIP REST metadata dict of a model or pipeline."""

    def tensors(items: list[dict[str, Any]]) -> list[Any]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=t["name"], datatype=t["datatype"], shape=[int(d) for d in t["shape"]]
            )
            for t in items
        ]

    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=[str(v) for v in metadata["versions"]],
        platform=metadata["platform"],
        inputs=tensors(metadata["inputs"]),
        outputs=tensors(metadata["outputs"]),
    )
