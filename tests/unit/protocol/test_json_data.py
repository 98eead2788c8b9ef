"""JSON data arrays decoded straight into numpy (issue 27): the wire semantics of the
decoder that parsed every element into a Python object first, at a small multiple of
the body's memory, with the element count refused before anything is materialised."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import orjson
import pytest

from serve_app.errors import InvalidInput, SchemaViolation
from serve_app.protocol import json_data, oip
from serve_app.protocol.limits import RequestLimits


def body_of(datatype: str, shape: list[int], data: str) -> bytes:
    return (
        f'{{"inputs": [{{"name": "x", "shape": {json.dumps(shape)}, '
        f'"datatype": "{datatype}", "data": {data}}}]}}'
    ).encode()


def decoded(datatype: str, shape: list[int], data: str) -> list:
    return oip.decode_request(body_of(datatype, shape, data)).inputs["x"].tolist()


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "expected"),
    [
        ("FP32", [2, 2], "[[1, 2], [3, 4.5]]", [[1.0, 2.0], [3.0, 4.5]]),
        ("FP32", [4], "[[1, 2], [3, 4]]", [1.0, 2.0, 3.0, 4.0]),  # nesting is not checked
        ("FP32", [2, 2], "[1, 2, 3, 4]", [[1.0, 2.0], [3.0, 4.0]]),
        ("FP64", [3], "[NaN, Infinity, -Infinity]", [np.nan, np.inf, -np.inf]),
        pytest.param(
            "FP32",
            [1],
            "[1e300]",
            [np.inf],
            marks=pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
        ),
        ("INT64", [2], "[1.5, -2]", [1, -2]),
        ("INT64", [1], "[9007199254740993]", [9007199254740993]),  # above 2**53: exact
        ("UINT64", [1], "[18446744073709551615]", [18446744073709551615]),
        ("BOOL", [2], "[true, false]", [True, False]),
        ("FP32", [2, 0], "[[], []]", [[], []]),
        ("FP32", [0], "[ ]", []),
        ("BYTES", [2], '["a,b", "c]\\"["]', ["a,b", 'c]"[']),
        ("BYTES", [1, 2], '[["x", "y"]]', [["x", "y"]]),
    ],
)
def test_values_decode_as_before(
    datatype: str, shape: list[int], data: str, expected: list
) -> None:
    np.testing.assert_array_equal(np.array(decoded(datatype, shape, data)), np.array(expected))


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [3], "[1, 2]", "input 'x': shape [3] needs 3 elements, got 2"),
        ("FP32", [1], '["1"]', "input 'x': data does not fit FP32: numeric data expected"),
        ("FP32", [1], "[null]", "input 'x': data does not fit FP32: numeric data expected"),
        ("FP32", [2], "[true, 1]", "input 'x': data does not fit FP32: numeric data expected"),
        ("FP32", [1], "[{}]", "input 'x': data does not fit FP32: numeric data expected"),
        (
            "BOOL",
            [2],
            "[true, 1]",
            "input 'x': data does not fit BOOL: BOOL data must be true/false",
        ),
        (
            "UINT8",
            [1],
            "[300]",
            "input 'x': data does not fit UINT8: Python integer 300 out of bounds for uint8",
        ),
        (
            "INT64",
            [1],
            "[123456789012345678901]",
            "input 'x': data does not fit INT64: Python int too large to convert to C long",
        ),
        ("BYTES", [2], '["a", 1]', "input 'x': BYTES data must be strings"),
        ("BYTES", [1], '["a,b", "c"]', "input 'x': shape [1] needs 1 elements, got 2"),
    ],
)
def test_client_errors_keep_their_messages(
    datatype: str, shape: list[int], data: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as e:
        decoded(datatype, shape, data)
    assert (e.value.status_code, str(e.value)) == (400, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (body_of("FP32", [3], "[1, 2, ]"), "input 'x': data is not valid JSON"),
        (body_of("FP32", [2], "[1, 01]"), "input 'x': data is not valid JSON"),
        (body_of("FP32", [2], "[[1], [2]")[:-4], "unterminated array"),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a]}]}',
            ("unterminated string"),
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], '
            b'"data": [2]}]}',
            "inputs.0: key 'data' given twice",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
            b'"inputs": []}',
            "key 'inputs' given twice",
        ),
    ],
)
def test_invalid_json_is_a_schema_violation(body: bytes, message: str) -> None:
    with pytest.raises(SchemaViolation) as e:
        oip.decode_request(body)
    assert e.value.status_code == 422
    assert str(e.value).startswith(f"invalid inference request: {message}"), str(e.value)


def test_a_data_key_written_with_escapes_still_decodes() -> None:
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "d\\u0061ta": [7]}]}'
    assert oip.decode_request(body).inputs["x"].tolist() == [7.0]


def test_data_and_keys_named_data_elsewhere_are_left_alone() -> None:
    body = orjson.dumps(
        {
            "parameters": {"data": [1, 2]},
            "inputs": [
                {"name": "a", "shape": [1], "datatype": "FP32", "data": [1],
                 "parameters": {"data": ["x"]}},
                {"name": "b", "shape": [2], "datatype": "INT32", "data": [[5], [6]]},
            ],
        }
    )  # fmt: skip
    request = oip.decode_request(body)
    assert request.parameters == {"data": [1, 2]}
    assert {k: v.tolist() for k, v in request.inputs.items()} == {"a": [1.0], "b": [5, 6]}


def test_chunks_split_anywhere_give_the_same_array(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(0).normal(size=(37, 11)).astype(np.float32)
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [37, 11], "datatype": "FP32", "data": x}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    for chunk_bytes in (1, 7, 64, 1000):
        monkeypatch.setattr(json_data, "CHUNK_BYTES", chunk_bytes)
        np.testing.assert_array_equal(oip.decode_request(body).inputs["x"], x)


def traced_peak_bytes(run: object) -> int:
    tracemalloc.start()
    try:
        run()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_numeric_body_decodes_within_a_small_multiple_of_its_size() -> None:
    x = np.random.default_rng(0).normal(size=(512, 1024)).astype(np.float32)
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [512, 1024], "datatype": "FP32", "data": x}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    assert len(body) > 5 * 2**20
    result: dict[str, np.ndarray] = {}
    peak = traced_peak_bytes(lambda: result.update(oip.decode_request(body).inputs))
    np.testing.assert_array_equal(result["x"], x)
    # The FP32 array (2 MiB) plus one chunk's parse (~1.3 MiB measured), whatever the
    # body's size; parsing every element into a Python float first took ~4x the body.
    assert peak < x.nbytes + 2 * 2**20, peak / 2**20


def test_an_element_count_above_the_shape_is_refused_before_parsing() -> None:
    body = body_of("FP32", [2], "[" + ",".join(["0.5"] * 500_000) + "]")
    with pytest.raises(InvalidInput) as e:
        traced_peak_bytes(lambda: oip.decode_request(body, None, RequestLimits()))
    assert str(e.value) == "input 'x': shape [2] needs 2 elements, got 500000"
    peak = traced_peak_bytes(lambda: pytest.raises(InvalidInput, oip.decode_request, body))
    assert peak < 0.1 * len(body), peak / len(body)
