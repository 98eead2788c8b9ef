"""Property test of the OIP decoder: whatever the body and header, decoding either
succeeds or raises one of our client errors (400/413/422), in bounded time. Anything
else would be a 500. The longer run is `loadtest/soak/fuzz_oip.py`."""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.errors import ServeAppError
from serve_app.protocol import oip
from serve_app.protocol.limits import RequestLimits, parse_header_length

DATATYPES = [*oip.DATATYPES, "FP8", "", "bytes"]
dims = st.one_of(
    st.integers(min_value=-3, max_value=8),
    st.integers(min_value=-(2**70), max_value=2**70),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
data = st.recursive(
    st.lists(scalars, max_size=12), lambda c: st.lists(c, max_size=4), max_leaves=40
)


@st.composite
def inputs(draw: Any) -> dict[str, Any]:
    inp: dict[str, Any] = {
        "name": draw(st.sampled_from(["text", "input", "x", "text"])),
        "shape": draw(st.lists(dims, max_size=10)),
        "datatype": draw(st.sampled_from(DATATYPES)),
    }
    if draw(st.booleans()):
        inp["data"] = draw(data)
    if draw(st.booleans()):
        inp["parameters"] = {"binary_data_size": draw(st.one_of(dims, st.text(max_size=3)))}
    return inp


@st.composite
def bodies(draw: Any) -> tuple[bytes, str | None]:
    request: dict[str, Any] = {"inputs": draw(st.lists(inputs(), max_size=20))}
    if draw(st.booleans()):
        request["id"] = draw(st.text(max_size=5))
    header = json.dumps(request, allow_nan=True).encode()
    tail = draw(st.binary(max_size=64))
    if draw(st.booleans()):  # well-formed length-prefixed elements
        items = draw(st.lists(st.binary(max_size=8), max_size=6))
        tail = b"".join(struct.pack("<I", len(b)) + b for b in items)
    length = draw(
        st.one_of(
            st.none(),
            st.just(str(len(header))),
            st.text(alphabet="0123456789-+ \u00b9\u0661", max_size=12),
        )
    )
    return header + tail, length


LIMITS = RequestLimits()


def decode_is_client_error(case: tuple[bytes, str | None]) -> None:
    """The property: decoding succeeds or raises a 400/413/422, within 0.5 s."""
    body, length = case
    t0 = time.perf_counter()
    try:
        oip.decode_request(body, parse_header_length(length, len(body)), LIMITS)
    except ServeAppError as e:
        assert e.status_code in (400, 413, 422), e
    assert time.perf_counter() - t0 < 0.5


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_decoder_answers_only_client_errors_in_bounded_time(case: tuple[bytes, str | None]) -> None:
    decode_is_client_error(case)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeply nested JSON
        b'{"inputs": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
        b"\xff\xfe\x00garbage",
        json.dumps(
            {
                "inputs": [
                    {"name": f"i{k}", "shape": [1], "datatype": "FP32", "data": [1]}
                    for k in range(5000)
                ]
            }
        ).encode(),
    ],
)
def test_hostile_bodies_are_client_errors(body: bytes) -> None:
    with pytest.raises(ServeAppError) as e:
        oip.decode_request(body, None, LIMITS)
    assert e.value.status_code in (400, 413, 422)
