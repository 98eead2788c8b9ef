"""Limits on what one inference request may declare. Every size a client declares
(inputs, dimensions, rows, elements, bytes) is checked against these *before* anything
is allocated or computed from it, so a 150-byte request cannot make a replica allocate
gigabytes or spin on a huge shape."""

from __future__ import annotations

from pydantic import Field

from serve_app.errors import InvalidInput, PayloadTooLarge
from serve_app.schema_base import StrictModel

MAX_HEADER_LENGTH_DIGITS = 10
"""``Inference-Header-Content-Length`` longer than this is refused before ``int()``."""


class RequestLimits(StrictModel):
    """Per-request limits of the OIP decoder (``http.limits`` in the AppConfig)."""

    max_inputs: int = Field(16, ge=1, le=4096, description="Input tensors per request.")
    max_dims: int = Field(8, ge=1, le=64, description="Dimensions per tensor shape.")
    max_rows: int = Field(
        1024, ge=1, description="First dimension (rows, i.e. batch items) of any input."
    )
    max_elements: int = Field(
        4_194_304, ge=1, description="Elements per tensor (4 Mi: 16 MiB of FP32)."
    )
    max_element_bytes: int = Field(
        65_536, ge=1, description="Bytes of one BYTES element (e.g. one text)."
    )
    max_decoded_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description=(
            "Decoded size of all inputs together: elements x item size, and for BYTES "
            "the element bytes plus 64 bytes of Python object overhead per element."
        ),
    )

    def element_count(self, name: str, shape: list[int]) -> int:
        """Elements of ``shape``, computed with an early exit against the limits.

        Raises:
            InvalidInput: too many dimensions or a negative one (400).
            PayloadTooLarge: rows or elements above the limit (413).
        """
        if len(shape) > self.max_dims:
            raise InvalidInput(
                f"input {name!r}: shape has {len(shape)} dimensions, above the limit of "
                f"{self.max_dims} (http.limits.max_dims)"
            )
        if any(d < 0 for d in shape):
            raise InvalidInput(f"input {name!r}: shape {shape} has a negative dimension")
        if shape and shape[0] > self.max_rows:
            raise PayloadTooLarge(
                f"input {name!r}: {shape[0]} rows, above the limit of {self.max_rows} "
                "(http.limits.max_rows)"
            )
        count = 1
        for d in shape:
            # Each factor is bounded, so the running product never grows past
            # max_elements squared before the early exit.
            if d > self.max_elements:
                count = self.max_elements + 1
                break
            count *= d
            if count > self.max_elements:
                break
        if count > self.max_elements:
            raise PayloadTooLarge(
                f"input {name!r}: shape {shape} holds more than {self.max_elements} elements "
                "(http.limits.max_elements)"
            )
        return count


def parse_header_length(value: str | None, body_bytes: int) -> int | None:
    """Strictly parse ``Inference-Header-Content-Length``: ASCII digits only, at most
    ``MAX_HEADER_LENGTH_DIGITS`` of them, and within the body.

    Raises:
        InvalidInput: anything else (400), with what was wrong.
    """
    if value is None:
        return None
    if not value or len(value) > MAX_HEADER_LENGTH_DIGITS or not value.isascii():
        raise InvalidInput(
            f"Inference-Header-Content-Length must be 1-{MAX_HEADER_LENGTH_DIGITS} ASCII "
            f"digits, got {value[:20]!r}"
        )
    if not value.isdigit():
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a non-negative integer, got {value!r}"
        )
    length = int(value)
    if not 0 < length <= body_bytes:
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} outside the body of {body_bytes} bytes"
        )
    return length
