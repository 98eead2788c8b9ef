"""Open Inference Protocol (KServe v2) REST: wire schema, decode and encode.

Includes the binary tensor data extension: a request or response body is a JSON header
of ``Inference-Header-Content-Length`` bytes followed by raw tensor buffers, each
declared by a ``binary_data_size`` parameter, in the order of the tensors. BYTES
elements are 4-byte little-endian length prefixed. No HTTP framework is imported here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.errors import InvalidInput, PayloadTooLarge, SchemaViolation
from serve_app.protocol.json_data import DataSpan, decode_numbers, decode_strings, split_data
from serve_app.protocol.limits import RequestLimits

BYTES_OBJECT_OVERHEAD = 64
"""Bytes a decoded BYTES element costs beyond its content (a Python bytes/str object)."""
DEFAULT_LIMITS = RequestLimits()

HEADER_LENGTH = "inference-header-content-length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}


def datatype_of(array: np.ndarray) -> str:
    """OIP datatype name of a numpy array (object arrays are BYTES)."""
    if array.dtype == object:
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if dtype == array.dtype:
            return name
    raise InvalidInput(f"unsupported dtype {array.dtype}")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Wire):
    """One input tensor of an inference request."""

    name: str = Field(description="Input name, as in the model metadata.")
    shape: list[int] = Field(description="Tensor shape; the product is the element count.")
    datatype: str = Field(description="OIP datatype, e.g. FP32, INT64, BYTES.")
    parameters: dict[str, Any] | None = Field(None, description="e.g. binary_data_size.")
    data: list[Any] | None = Field(None, description="Row-major elements, flat or nested.")


class RequestOutput(_Wire):
    """An output the client asks for."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Wire):
    """OIP inference request body (JSON part)."""

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass
class DecodedRequest:
    """An inference request with its inputs as numpy arrays."""

    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    requested_outputs: dict[str, bool] | None = None
    """Output name -> wants binary; None means every output."""
    binary_outputs: bool = False
    """Default for outputs not listed: binary_data_output request parameter."""
    allocated_bytes: int = 0
    """Upper bound of what decoding allocated for the inputs (binary numeric inputs are
    views of the body: none)."""


def decode_bytes_buffer(
    buf: memoryview, count: int, name: str, max_element_bytes: int | None = None
) -> np.ndarray:
    """Parse ``count`` length-prefixed BYTES elements.

    The buffer must hold at least ``4 * count`` bytes before anything is allocated.

    Raises:
        InvalidInput: a buffer that does not hold ``count`` elements exactly.
        PayloadTooLarge: an element above ``max_element_bytes``.
    """
    if 4 * count > len(buf):
        raise InvalidInput(
            f"input {name!r}: {count} BYTES elements need at least {4 * count} bytes, "
            f"the buffer has {len(buf)}"
        )
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(buf):
            raise InvalidInput(f"input {name!r}: BYTES buffer ends inside element {i}")
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if max_element_bytes is not None and n > max_element_bytes:
            raise PayloadTooLarge(
                f"input {name!r}: BYTES element {i} has {n} bytes, above the limit of "
                f"{max_element_bytes} (http.limits.max_element_bytes)"
            )
        if pos + n > len(buf):
            raise InvalidInput(f"input {name!r}: BYTES element {i} runs past the buffer")
        out[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != len(buf):
        raise InvalidInput(f"input {name!r}: {len(buf) - pos} trailing bytes in BYTES buffer")
    return out


def encode_bytes_buffer(array: np.ndarray) -> bytes:
    """Serialize BYTES elements with 4-byte little-endian length prefixes."""
    parts = []
    for item in array.reshape(-1):
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _decoded_bytes(inp: RequestInput, count: int, binary: memoryview | None) -> int:
    """Upper bound of what decoding ``inp`` allocates, known before decoding it."""
    if inp.datatype != "BYTES":
        return count * DATATYPES[inp.datatype].itemsize
    content = len(binary) if binary is not None else 0
    return content + count * BYTES_OBJECT_OVERHEAD


def _check_json_bytes(name: str, flat: list[Any], limit: int) -> int:
    """Total UTF-8 bytes of JSON BYTES elements, each within ``limit``."""
    total = 0
    for i, x in enumerate(flat):
        n = len(x) if len(x) * 4 <= limit else len(x.encode("utf-8", "surrogatepass"))
        if n > limit:
            raise PayloadTooLarge(
                f"input {name!r}: BYTES element {i} has {n} bytes, above the limit of "
                f"{limit} (http.limits.max_element_bytes)"
            )
        total += n
    return total


def _decode_input(
    inp: RequestInput,
    binary: memoryview | None,
    limits: RequestLimits,
    count: int,
    body: bytes,
    span: DataSpan | None,
) -> np.ndarray:
    dtype = DATATYPES[inp.datatype]
    if binary is not None:
        if inp.datatype == "BYTES":
            out = decode_bytes_buffer(binary, count, inp.name, limits.max_element_bytes)
            return out.reshape(inp.shape)
        if len(binary) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {inp.name!r}: binary data has {len(binary)} bytes, shape {inp.shape} "
                f"of {inp.datatype} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(binary, dtype=dtype.newbyteorder("<")).reshape(inp.shape)
    if span is None and inp.data is not None:  # a key split_data did not see (escaped)
        body = json.dumps(inp.data).encode()
        span = DataSpan(0, len(body))
    if span is None:
        raise InvalidInput(f"input {inp.name!r}: no data and no binary_data_size")
    if inp.datatype == "BYTES":
        flat = decode_strings(body, span, inp.name, inp.shape, count)
        _check_json_bytes(inp.name, flat, limits.max_element_bytes)
        array = np.empty(count, dtype=object)
        array[:] = flat
        return array.reshape(inp.shape)
    numbers = decode_numbers(body, span, inp.name, inp.shape, inp.datatype, dtype, count)
    return numbers.reshape(inp.shape)


def decode_request(
    body: bytes, header_length: int | None = None, limits: RequestLimits = DEFAULT_LIMITS
) -> DecodedRequest:
    """Decode an OIP request body (JSON, or JSON + binary tensors).

    Every declared size is checked against ``limits`` before anything is allocated.

    Args:
        body: The whole HTTP body.
        header_length: Value of ``Inference-Header-Content-Length`` when present.
        limits: Per-request limits.

    Raises:
        SchemaViolation: the JSON does not follow the schema (422).
        InvalidInput: tensors do not match their shape or datatype (400).
        PayloadTooLarge: a declared size above a limit (413).
    """
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} outside body of {len(body)} bytes"
            )
        json_part, rest = body[:header_length], memoryview(body)[header_length:]
    else:
        json_part, rest = body, memoryview(b"")
    # The data arrays are parsed into numpy per input below, after the limits, never
    # into one Python object per element (see protocol/json_data.py).
    split = split_data(json_part)
    try:
        req = InferenceRequest.model_validate_json(split.skeleton)
    except ValidationError as e:
        raise SchemaViolation(_validation_message(e)) from None

    if len(req.inputs) > limits.max_inputs:
        raise PayloadTooLarge(
            f"{len(req.inputs)} inputs, above the limit of {limits.max_inputs} "
            "(http.limits.max_inputs)"
        )
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    budget = limits.max_decoded_bytes
    allocated = 0
    for index, inp in enumerate(req.inputs):
        span = split.data.get(index)
        if span is not None and inp.data != []:  # a later "data" key replaced the array
            raise SchemaViolation(
                f"invalid inference request: inputs.{index}: key 'data' given twice"
            )
        if inp.name in inputs:
            raise InvalidInput(f"input {inp.name!r} given twice")
        if inp.datatype not in DATATYPES:
            raise InvalidInput(f"input {inp.name!r}: unknown datatype {inp.datatype!r}")
        count = limits.element_count(inp.name, inp.shape)
        size = (inp.parameters or {}).get("binary_data_size")
        binary = None
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {inp.name!r}: binary_data_size must be an integer >= 0")
            if inp.data is not None:
                raise InvalidInput(f"input {inp.name!r}: both data and binary_data_size given")
            if offset + size > len(rest):
                raise InvalidInput(
                    f"input {inp.name!r}: binary_data_size {size} runs past the body"
                )
            binary = rest[offset : offset + size]
            offset += size
        decoded_bytes = _decoded_bytes(inp, count, binary)
        budget -= decoded_bytes
        if binary is None or inp.datatype == "BYTES":
            allocated += decoded_bytes
        if budget < 0:
            raise PayloadTooLarge(
                f"input {inp.name!r}: the decoded inputs exceed {limits.max_decoded_bytes} "
                "bytes (http.limits.max_decoded_bytes)"
            )
        inputs[inp.name] = _decode_input(inp, binary, limits, count, json_part, span)
    if offset != len(rest):
        raise InvalidInput(f"{len(rest) - offset} bytes of binary data not claimed by any input")

    params = req.parameters or {}
    requested = None
    if req.outputs is not None:
        requested = {
            o.name: bool((o.parameters or {}).get("binary_data", params.get("binary_data_output")))
            for o in req.outputs
        }
    return DecodedRequest(
        id=req.id,
        inputs=inputs,
        parameters=params,
        requested_outputs=requested,
        binary_outputs=bool(params.get("binary_data_output", False)),
        allocated_bytes=allocated,
    )


def encode_response(
    model_name: str,
    model_version: str,
    request: DecodedRequest,
    outputs: dict[str, np.ndarray],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode outputs as an OIP response; returns ``(body, headers)``.

    ``parameters`` (e.g. a pipeline's degraded nodes) go into the response's
    ``parameters`` when not empty.

    Raises:
        InvalidInput: the client asked for an output the model does not have.
    """
    wanted = request.requested_outputs
    if wanted is not None:
        unknown = sorted(set(wanted) - set(outputs))
        if unknown:
            raise InvalidInput(
                f"unknown output(s) requested: {unknown}; model has {sorted(outputs)}"
            )
        names = list(wanted)
    else:
        names = list(outputs)
    out_json: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for name in names:
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        binary = wanted[name] if wanted is not None else request.binary_outputs
        if binary:
            buf = (
                encode_bytes_buffer(array)
                if array.dtype == object
                else np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(buf)}
            buffers.append(buf)
        elif array.dtype == object:
            entry["data"] = [
                x.decode("utf-8") if isinstance(x, bytes) else x for x in array.reshape(-1)
            ]
        else:
            entry["data"] = array.reshape(-1)
        out_json.append(entry)
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": out_json,
    }
    if request.id is not None:
        response["id"] = request.id
    if parameters:
        response["parameters"] = parameters
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, {"content-type": JSON_CONTENT_TYPE}
    return header + b"".join(buffers), {
        "content-type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(header)),
    }


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid inference request: " + "; ".join(parts)
