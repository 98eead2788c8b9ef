"""OIP v2 encode/decode, including the binary tensor data extension (no Ray)."""

from __future__ import annotations

import re
import struct

import numpy as np
import orjson
import pytest

from serve_app.errors import InvalidInput, PayloadTooLarge, SchemaViolation
from serve_app.protocol import oip
from serve_app.protocol.limits import RequestLimits, parse_header_length


def _json(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_decode_bytes_and_fp32() -> None:
    req = oip.decode_request(
        _json(
            {
                "id": "r1",
                "inputs": [
                    {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
                    {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
                ],
            }
        )
    )
    assert req.id == "r1"
    assert list(req.inputs["text"]) == ["a", "b"]
    assert req.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(req.inputs["x"], [[1, 2], [3, 4]])
    assert req.requested_outputs is None


@pytest.mark.parametrize(
    ("inp", "message"),
    [
        (
            {"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]},
            "input 'x': shape [3] needs 3 elements, got 2",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "FP99", "data": [1]},
            "input 'x': unknown datatype 'FP99'",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "INT64", "data": ["a"]},
            "input 'x': data does not fit INT64: numeric data expected",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]},
            "input 'x': BYTES data must be strings",
        ),
        (
            {"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]},
            "input 'x': shape [-1] has a negative dimension",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "FP32"},
            "input 'x': no data and no binary_data_size",
        ),
    ],
)
def test_decode_errors_are_400(inp: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        oip.decode_request(_json({"inputs": [inp]}))
    assert str(e.value) == message
    assert e.value.status_code == 400


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"inputs": []}', b'{"inputs": [{"name": "x"}]}', b'{"inputs": [], "zzz": 1}'],
)
def test_schema_violations_are_422(body: bytes) -> None:
    with pytest.raises(SchemaViolation) as e:
        oip.decode_request(body)
    assert e.value.status_code == 422
    assert str(e.value).startswith("invalid inference request: ")


def test_binary_request_roundtrip() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    text = [b"hello", "wörld".encode()]
    text_buf = b"".join(struct.pack("<I", len(t)) + t for t in text)
    header = _json(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                },
                {
                    "name": "t",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(text_buf)},
                },
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        }
    )
    req = oip.decode_request(header + x.tobytes() + text_buf, header_length=len(header))
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert list(req.inputs["t"]) == text
    assert req.requested_outputs == {"y": True, "z": False}


def test_binary_size_errors() -> None:
    header = _json(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    with pytest.raises(InvalidInput, match="binary_data_size 8 runs past the body"):
        oip.decode_request(header + b"1234", header_length=len(header))
    with pytest.raises(InvalidInput, match="4 bytes of binary data not claimed by any input"):
        oip.decode_request(header + b"12345678" + b"xxxx", header_length=len(header))
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length 999 outside body"):
        oip.decode_request(header, header_length=999)
    bad_text = _json(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 6},
                }
            ]
        }
    )
    with pytest.raises(InvalidInput, match="BYTES element 0 runs past the buffer"):
        oip.decode_request(bad_text + struct.pack("<I", 9) + b"ab", header_length=len(bad_text))


def test_encode_json_response_echoes_id() -> None:
    req = oip.DecodedRequest(id="abc", inputs={})
    body, headers = oip.encode_response(
        "m", "3", req, {"embedding": np.array([[0.5, -1.25]], dtype=np.float32)}
    )
    assert headers == {"content-type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "3",
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [1, 2], "data": [0.5, -1.25]}
        ],
        "id": "abc",
    }


def test_encode_binary_response() -> None:
    y = np.array([[1.5, 2.5]], dtype=np.float32)
    req = oip.DecodedRequest(id=None, inputs={}, binary_outputs=True)
    body, headers = oip.encode_response("m", "1", req, {"y": y})
    n = int(headers[oip.HEADER_LENGTH])
    assert headers["content-type"] == "application/octet-stream"
    meta = orjson.loads(body[:n])
    assert meta["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    ]
    np.testing.assert_array_equal(np.frombuffer(body[n:], dtype="<f4").reshape(1, 2), y)


def test_unknown_requested_output() -> None:
    req = oip.DecodedRequest(id=None, inputs={}, requested_outputs={"nope": False})
    with pytest.raises(InvalidInput, match=r"unknown output\(s\) requested: \['nope'\]"):
        oip.encode_response("m", "1", req, {"y": np.zeros((1, 1), dtype=np.float32)})


# --- limits: every declared size is checked before anything is allocated -------------


def _binary(inputs: list[dict], buffers: bytes = b"") -> tuple[bytes, int]:
    import json  # orjson refuses integers beyond 64 bits; clients may still send them

    header = json.dumps({"inputs": inputs}).encode()
    return header + buffers, len(header)


@pytest.mark.parametrize(
    ("shape", "error", "message"),
    [
        ([100_000_000], PayloadTooLarge, "100000000 rows, above the limit of 1024"),
        ([1000, 100_000], PayloadTooLarge, "shape [1000, 100000] holds more than 4194304 elements"),
        ([0, 10**20], PayloadTooLarge, "holds more than 4194304 elements"),
        ([1] * 15_000, InvalidInput, "shape has 15000 dimensions, above the limit of 8"),
        ([2000, 1], PayloadTooLarge, "2000 rows, above the limit of 1024"),
        ([1, -3], InvalidInput, "has a negative dimension"),
    ],
)
def test_declared_shapes_are_bounded_before_allocation(
    shape: list[int], error: type[Exception], message: str
) -> None:
    import time

    body, n = _binary(
        [{"name": "t", "shape": shape, "datatype": "BYTES", "parameters": {"binary_data_size": 0}}]
    )
    t0 = time.perf_counter()
    with pytest.raises(error, match=re.escape(message)):
        oip.decode_request(body, n)
    assert time.perf_counter() - t0 < 0.1  # nothing proportional to the declared size


def test_bytes_count_needs_the_buffer_before_allocating() -> None:
    body, n = _binary(
        [
            {
                "name": "t",
                "shape": [1000],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 8},
            }
        ],
        b"\x00" * 8,
    )
    with pytest.raises(InvalidInput, match="1000 BYTES elements need at least 4000 bytes"):
        oip.decode_request(body, n)


def test_element_and_total_size_limits() -> None:
    limits = RequestLimits(max_element_bytes=10, max_decoded_bytes=2048)
    big = {"name": "t", "shape": [1], "datatype": "BYTES", "data": ["x" * 11]}
    with pytest.raises(
        PayloadTooLarge, match="BYTES element 0 has 11 bytes, above the limit of 10"
    ):
        oip.decode_request(orjson.dumps({"inputs": [big]}), None, limits)
    floats = {"name": "f", "shape": [1000], "datatype": "FP32", "data": [0.0] * 1000}
    with pytest.raises(PayloadTooLarge, match="decoded inputs exceed 2048 bytes"):
        oip.decode_request(orjson.dumps({"inputs": [floats]}), None, limits)
    many = [{"name": f"i{k}", "shape": [1], "datatype": "FP32", "data": [0.0]} for k in range(17)]
    with pytest.raises(PayloadTooLarge, match="17 inputs, above the limit of 16"):
        oip.decode_request(orjson.dumps({"inputs": many}))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9" * 5000, "must be 1-10 ASCII digits"),
        ("\u00b9", "must be 1-10 ASCII digits"),  # superscript one: str.isdigit() is True
        ("-5", "must be a non-negative integer"),
        ("abc", "must be a non-negative integer"),
        ("", "must be 1-10 ASCII digits"),
        ("0", "outside the body of 100 bytes"),
        ("101", "outside the body of 100 bytes"),
    ],
)
def test_header_length_is_parsed_strictly(value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_header_length(value, 100)
    assert parse_header_length("100", 100) == 100
    assert parse_header_length(None, 100) is None
