"""The job message: a JSON or binary-extension body survives the trip through Celery's
keyword arguments byte for byte, and anything that is not a job is refused naming what
is wrong (that reason is what the unprocessable queue shows)."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

from serve_app.jobs.message import JobMessage, make_message, parse_message

JSON_BODY = orjson.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}]}
)
HEADER = (
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}]}'
)
BINARY_BODY = HEADER + b"\x00\x00\xc0?\x00\xff\x00\xc0"  # bytes that are not UTF-8


def through_celery(message: JobMessage) -> JobMessage:
    """``message`` as a consumer reads it: its kwargs JSON-encoded and decoded again."""
    kwargs = json.loads(json.dumps(message.task_kwargs()))
    return parse_message((), kwargs)


def test_a_json_body_travels_as_an_object_and_comes_back_equal() -> None:
    message = make_message("minilm", JSON_BODY, job_id="job-1")
    assert message.request == orjson.loads(JSON_BODY)
    assert (message.body_b64, message.header_length, message.version) == (None, None, None)
    assert set(message.task_kwargs()) == {"job_id", "target", "submitted_at_s", "request"}
    received = through_celery(message)
    assert received == message
    assert received.body() == JSON_BODY


def test_a_binary_body_travels_as_base64_with_its_header_length() -> None:
    message = make_message("minilm", BINARY_BODY, header_length=len(HEADER), version="2")
    assert message.request is None
    assert message.body_b64 == base64.b64encode(BINARY_BODY).decode("ascii")
    assert (message.header_length, message.version) == (len(HEADER), "2")
    received = through_celery(message)
    assert received == message
    assert received.body() == BINARY_BODY
    assert received.header_length == len(HEADER)


def test_a_fresh_job_id_is_32_hex_characters_and_new_each_time() -> None:
    first, second = make_message("m", b"{}"), make_message("m", b"{}")
    assert len(first.job_id) == 32
    int(first.job_id, 16)
    assert first.job_id != second.job_id


def valid(**changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"job_id": "job-1", "target": "minilm", "request": {"inputs": []}}
    kwargs.update(changes)
    return {k: v for k, v in kwargs.items() if v is not None}


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ((1, 2), valid(), "a job takes keyword arguments only, got 2 positional"),
        ((), valid(job_id=None), "not a job message: job_id: Field required"),
        (
            (),
            valid(body_b64="AAAA"),
            "not a job message: message: Value error, a job carries exactly one of request "
            "and body_b64",
        ),
        (
            (),
            valid(request=None),
            "not a job message: message: Value error, a job carries exactly one of request "
            "and body_b64",
        ),
        (
            (),
            valid(header_length=3),
            "not a job message: message: Value error, header_length goes with body_b64",
        ),
        ((), valid(target="../etc"), "not a job message: target: Value error, invalid model name"),
        ((), valid(target="Minilm"), "not a job message: target: Value error, invalid model name"),
        (
            (),
            valid(job_id="a/b"),
            "not a job message: job_id: String should match pattern '^[A-Za-z0-9_-]{1,64}$'",
        ),
        ((), valid(job_id="x" * 65), "not a job message: job_id: String should match pattern"),
        ((), valid(request=[1, 2]), "not a job message: request: Input should be a valid dict"),
        ((), valid(priority=9), "not a job message: priority: Extra inputs are not permitted"),
    ],
    ids=[
        "positional",
        "no-job-id",
        "both-bodies",
        "no-body",
        "header-length-without-binary",
        "path-target",
        "upper-case-target",
        "slash-in-job-id",
        "long-job-id",
        "request-not-object",
        "unknown-key",
    ],
)
def test_what_is_not_a_job_is_refused_naming_the_problem(
    args: tuple[Any, ...], kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError) as e:
        parse_message(args, kwargs)
    assert str(e.value).startswith(reason), str(e.value)


@pytest.mark.parametrize(
    ("body_b64", "detail"),
    [("not base64!", "Only base64 data is allowed"), ("QQ", "Incorrect padding")],
)
def test_base64_that_does_not_decode_is_refused_before_inference(
    body_b64: str, detail: str
) -> None:
    with pytest.raises(ValueError) as e:
        parse_message((), valid(request=None, body_b64=body_b64, header_length=0))
    assert str(e.value).startswith("not a job message: ")
    assert detail in str(e.value)
    # BUG: every other refusal names its field ("job_id: ...", "target: ..."); this one
    # does not say that body_b64 is the field that failed to decode (see the report).
    assert "body_b64" in str(e.value)


def test_a_json_route_body_that_is_not_json_is_not_made_into_a_job() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        make_message("minilm", b"\x00\x01 not json")
