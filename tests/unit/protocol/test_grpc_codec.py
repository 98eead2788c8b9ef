"""KServe v2 gRPC codec and error mapper (no Ray, no server)."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult
from tritonclient.grpc import service_pb2 as pb

from serve_app.errors import (
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    SchemaViolation,
    ServiceUnavailable,
)
from serve_app.protocol.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    grpc_status,
    metadata_response,
)
from serve_app.protocol.limits import RequestLimits

LIMITS = RequestLimits()


def tritonclient_request(
    *inputs: InferInput, outputs: list[str] | None = None
) -> pb.ModelInferRequest:
    """What a stock ``tritonclient.grpc`` client puts on the wire (raw_input_contents)."""
    request = pb.ModelInferRequest(model_name="m", id="r1")
    for inp in inputs:
        request.inputs.extend([inp._get_tensor()])
        request.raw_input_contents.extend([inp._get_content()])
    for name in outputs or []:
        request.outputs.extend([InferRequestedOutput(name)._get_tensor()])
    return request


def text_input(*texts: str) -> InferInput:
    inp = InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return inp


def test_bytes_raw_input_decodes_like_triton() -> None:
    decoded = decode_infer_request(tritonclient_request(text_input("héllo", "")), LIMITS)
    assert decoded.model_name == "m" and decoded.id == "r1" and decoded.model_version is None
    assert decoded.inputs["text"].tolist() == ["héllo".encode(), b""]
    assert decoded.requested_outputs is None


def test_fp32_raw_and_typed_contents_agree() -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    inp = InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(data)
    raw = decode_infer_request(tritonclient_request(inp, outputs=["y"]), LIMITS)
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    tensor.contents.fp32_contents.extend(data.reshape(-1).tolist())
    np.testing.assert_array_equal(raw.inputs["x"], data)
    np.testing.assert_array_equal(decode_infer_request(typed, LIMITS).inputs["x"], data)
    assert raw.requested_outputs == ["y"]


def test_typed_bytes_contents() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"a", b"bc"]
    )
    assert decode_infer_request(request, LIMITS).inputs["text"].tolist() == [b"a", b"bc"]


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda r: r.ClearField("inputs"), InvalidInput, "inference request has no inputs"),
        (
            lambda r: setattr(r.inputs[0], "datatype", "FP8"),
            InvalidInput,
            "input 'text': unknown datatype 'FP8' (one of BOOL, UINT8, UINT16, UINT32, "
            "UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES)",
        ),
        (
            lambda r: r.inputs[0].shape.__setitem__(0, 3),
            InvalidInput,
            "input 'text': 3 BYTES elements need at least 12 bytes, the buffer has 9",
        ),
        (
            lambda r: r.raw_input_contents.append(b""),
            InvalidInput,
            "raw_input_contents has 2 buffers for 1 inputs (all inputs raw, or none)",
        ),
        (
            lambda r: r.inputs[0].shape.__setitem__(0, 2000),
            PayloadTooLarge,
            "input 'text': 2000 rows, above the limit of 1024 (http.limits.max_rows)",
        ),
        (
            lambda r: r.inputs[0].contents.bytes_contents.append(b"x"),
            InvalidInput,
            "input 'text': contents given together with raw_input_contents",
        ),
    ],
)
def test_malformed_requests_are_refused_exactly(mutate, error, message) -> None:  # type: ignore[no-untyped-def]
    request = tritonclient_request(text_input("hello"))
    mutate(request)
    with pytest.raises(error) as info:
        decode_infer_request(request, LIMITS)
    assert str(info.value) == message


def test_fp32_raw_size_mismatch() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2])
    request.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(InvalidInput) as info:
        decode_infer_request(request, LIMITS)
    assert str(info.value) == "input 'x': raw_input_contents has 4 bytes, shape [2] of FP32 needs 8"


def test_element_and_decoded_limits() -> None:
    small = RequestLimits(max_element_bytes=4, max_decoded_bytes=1024)
    with pytest.raises(PayloadTooLarge) as info:
        decode_infer_request(tritonclient_request(text_input("hello")), small)
    assert str(info.value) == (
        "input 'text': BYTES element 0 has 5 bytes, above the limit of 4 "
        "(http.limits.max_element_bytes)"
    )
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP64", shape=[200])
    request.raw_input_contents.append(b"\0" * 1600)
    with pytest.raises(PayloadTooLarge) as info:
        decode_infer_request(request, small)
    assert str(info.value) == (
        "inputs decode to more than 1024 bytes (http.limits.max_decoded_bytes)"
    )


def test_fp16_needs_raw_contents() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInput) as info:
        decode_infer_request(request, LIMITS)
    assert str(info.value) == "input 'h': FP16 has no typed contents; send it in raw_input_contents"


def test_response_is_what_tritonclient_reads() -> None:
    decoded = decode_infer_request(tritonclient_request(text_input("a")), LIMITS)
    embedding = np.linspace(0, 1, 384, dtype=np.float32).reshape(1, 384)
    labels = np.array([b"x", "yz"], dtype=object)
    response = encode_infer_response("m", "2", decoded, {"embedding": embedding, "label": labels})
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "r1")
    result = InferResult(response)
    np.testing.assert_array_equal(result.as_numpy("embedding"), embedding)
    assert result.as_numpy("label").tolist() == [b"x", b"yz"]
    assert (
        response.raw_output_contents[1]
        == struct.pack("<I", 1) + b"x" + struct.pack("<I", 2) + b"yz"
    )


def test_requested_outputs_select_and_unknown_is_refused() -> None:
    decoded = decode_infer_request(tritonclient_request(text_input("a"), outputs=["b"]), LIMITS)
    outputs = {"a": np.zeros(1, np.float32), "b": np.ones(2, np.int64)}
    response = encode_infer_response("m", "1", decoded, outputs)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("b", "INT64", [2])]
    decoded.requested_outputs = ["c"]
    with pytest.raises(InvalidInput) as info:
        encode_infer_response("m", "1", decoded, outputs)
    assert str(info.value) == "unknown output(s) requested: ['c']; model has ['a', 'b']"


def test_metadata_response() -> None:
    response = metadata_response(
        {
            "name": "m",
            "versions": ["1", 2],
            "platform": "onnxruntime",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
        }
    )
    assert list(response.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [
        ("embedding", "FP32", [-1, 384])
    ]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (SchemaViolation("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound("bad"), grpc.StatusCode.NOT_FOUND),
        (PayloadTooLarge("bad"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ServiceUnavailable("bad", 2), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_one_mapper_keeps_our_messages(error: Exception, code: grpc.StatusCode) -> None:
    assert grpc_status(error, "rid") == (code, "bad")


def test_unexpected_errors_are_masked() -> None:
    assert grpc_status(KeyError("secret"), "rid-7") == (
        grpc.StatusCode.INTERNAL,
        "internal error, request id rid-7",
    )


def test_request_parameters_decode_to_python_values() -> None:
    request = tritonclient_request(text_input("a"))
    request.parameters["timing"].bool_param = True
    request.parameters["lang"].string_param = "de"
    request.parameters["k"].int64_param = 3
    request.parameters["t"].double_param = 0.5
    decoded = decode_infer_request(request, LIMITS)
    assert decoded.parameters == {"timing": True, "lang": "de", "k": 3, "t": 0.5}


def test_a_parameter_without_a_value_is_refused() -> None:
    request = tritonclient_request(text_input("a"))
    request.parameters["empty"].CopyFrom(pb.InferParameter())
    with pytest.raises(InvalidInput, match="parameter 'empty' has no value"):
        decode_infer_request(request, LIMITS)
