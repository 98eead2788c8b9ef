"""The job message: what a producer puts on a target's queue.

A message is a Celery task named :data:`TASK_NAME` whose keyword arguments are a
:class:`JobMessage`. The OIP request travels as it would over HTTP: ``request`` (the
JSON body as an object) or ``body_b64`` plus ``header_length`` (the binary tensor
extension's body and its ``Inference-Header-Content-Length``). The consumer answers it
exactly as ``POST /v2/models/<target>/infer`` would, so the stored answer equals the
synchronous one.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import orjson
from pydantic import Field, ValidationError, field_validator, model_validator

from serve_app.schema_base import StrictModel, validate_model_name

TASK_NAME = "serve_app.infer"
"""The Celery task name every serve_app consumer registers."""
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class JobMessage(StrictModel):
    """One inference job as it travels on the broker."""

    job_id: str = Field(
        pattern=JOB_ID_PATTERN,
        description="The job's id (also the Celery task id): letters, digits, '-', '_'.",
    )
    target: str = Field(description="The model or pipeline that answers the job.")
    version: str | None = Field(
        None, description="The model version the request names (None: the served one)."
    )
    submitted_at_s: float = Field(
        default_factory=time.time, description="Unix time the job was submitted."
    )
    request: dict[str, Any] | None = Field(
        None, description="The OIP request body, as JSON (one of request / body_b64)."
    )
    body_b64: str | None = Field(
        None, description="The raw request body, base64 (the binary tensor extension)."
    )
    header_length: int | None = Field(
        None, ge=0, description="Inference-Header-Content-Length of a binary body."
    )

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return validate_model_name(v)

    @model_validator(mode="after")
    def _one_body(self) -> JobMessage:
        if (self.request is None) == (self.body_b64 is None):
            raise ValueError("a job carries exactly one of request and body_b64")
        if self.header_length is not None and self.body_b64 is None:
            raise ValueError("header_length goes with body_b64 (a binary body)")
        return self

    def body(self) -> bytes:
        """The request body as the model's HTTP route would receive it."""
        if self.request is not None:
            return orjson.dumps(self.request)
        assert self.body_b64 is not None
        return base64.b64decode(self.body_b64, validate=True)

    def task_kwargs(self) -> dict[str, Any]:
        """The Celery task's keyword arguments (JSON-serialisable)."""
        return self.model_dump(mode="json", exclude_none=True)


def new_job_id() -> str:
    """A fresh job id (32 hex characters)."""
    return uuid.uuid4().hex


def make_message(
    target: str,
    body: bytes,
    header_length: int | None = None,
    version: str | None = None,
    job_id: str | None = None,
) -> JobMessage:
    """A message for ``body`` (as POSTed to the target's infer route): a JSON body
    travels as an object, a binary-extension body as base64."""
    common: dict[str, Any] = {"job_id": job_id or new_job_id(), "target": target}
    if version is not None:
        common["version"] = version
    if header_length is None:
        return JobMessage(**common, request=orjson.loads(body))
    encoded = base64.b64encode(body).decode("ascii")
    return JobMessage(**common, body_b64=encoded, header_length=header_length)


def parse_message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobMessage:
    """The message from a task's arguments.

    Raises:
        ValueError: positional arguments, or keyword arguments that are not a job
            (the reason names what is wrong; the message goes to the unprocessable queue).
    """
    if args:
        raise ValueError(f"a job takes keyword arguments only, got {len(args)} positional")
    try:
        message = JobMessage.model_validate(kwargs)
    except (ValidationError, ValueError) as e:
        raise ValueError(f"not a job message: {_short(e)}") from None
    try:
        message.body()  # base64 that does not decode is refused here, not at inference
    except (ValueError, orjson.JSONDecodeError) as e:
        raise ValueError(f"not a job message: body_b64: {e}") from None
    return message


def _short(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}"
            for err in e.errors()[:3]
        )
    return str(e)[:300]
