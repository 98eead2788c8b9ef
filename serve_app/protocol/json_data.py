"""JSON request bodies without the per-element Python objects: each input's ``data``
array is cut out of the body before the rest is validated, counted from its commas,
and parsed into numpy in chunks of ``CHUNK_BYTES``.

Parsing a whole 16 MiB numeric body into Python objects first (a float is 24 bytes plus
an 8-byte list slot for ~10 bytes of text) made ~9x the body in transient objects and
held the thread for seconds, before any limit applied. Here the element count is known
before anything is materialised, and a decode holds the body, the output array and one
chunk's objects at a time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serve_app.errors import InvalidInput, SchemaViolation

CHUNK_BYTES = 64 * 1024
"""Text parsed into Python numbers at a time: ~6k elements; orjson holds ~16x the text
while it parses (~1 MiB), the list of floats ~0.2 MiB."""

_TOKEN = re.compile(rb'[\[\]{}"]')
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')  # possessive: one pass, no backtracking
_WS = b" \t\n\r"
_BRACKETS_AS_SPACES = bytes.maketrans(b"[]", b"  ")
_STRUCTURE = b"[]," + _WS
_NUMBER_CHARS = b"0123456789.eE+-" + _STRUCTURE
_SCHEMA = "invalid inference request: "


@dataclass(frozen=True)
class DataSpan:
    """Where one input's ``data`` array lies in the body (``body[start:end]``)."""

    start: int
    end: int


@dataclass(frozen=True)
class SplitBody:
    """A JSON body with each input's ``data`` array replaced by ``[]``."""

    skeleton: bytes
    data: dict[int, DataSpan]
    """Input index -> its ``data`` array in the original body."""


def _schema_error(message: str) -> SchemaViolation:
    return SchemaViolation(_SCHEMA + message)


def _array_end(body: bytes, start: int) -> int:
    """Index after the ``]`` that closes the array opened at ``start`` (strings skipped)."""
    depth = 0
    pos = start
    while (m := _TOKEN.search(body, pos)) is not None:
        i = m.start()
        c = body[i]
        if c == 0x22:  # '"'
            s = _STRING.match(body, i)
            if s is None:
                raise _schema_error("unterminated string")
            pos = s.end()
            continue
        pos = i + 1
        if c in b"[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos
    raise _schema_error("unterminated array")


def split_data(body: bytes) -> SplitBody:
    """Cut the ``data`` array of every ``inputs[i]`` out of a JSON request body.

    Only the structure (brackets, braces, strings) is scanned; what lies between is
    left to the validation of the skeleton and of each array.

    Raises:
        SchemaViolation: an unterminated string or array, or ``inputs``/``data`` given
            twice (422).
    """
    # Open containers: (bracket, key it is the value of, or None).
    stack: list[tuple[int, bytes | None]] = []
    key: bytes | None = None
    index = -1
    inputs_seen = 0
    data: dict[int, DataSpan] = {}
    pieces: list[bytes] = []
    copied = 0
    pos = 0
    while (m := _TOKEN.search(body, pos)) is not None:
        i = m.start()
        c = body[i]
        if c == 0x22:  # a string: a key if a ':' follows it inside an object
            s = _STRING.match(body, i)
            if s is None:
                raise _schema_error("unterminated string")
            pos = s.end()
            if stack and stack[-1][0] == 0x7B:
                j = pos
                while j < len(body) and body[j] in _WS:
                    j += 1
                if j < len(body) and body[j] == 0x3A:  # ':'
                    key = body[i + 1 : pos - 1]
            continue
        pos = i + 1
        in_input = len(stack) == 3 and stack[1] == (0x5B, b"inputs") and stack[2][0] == 0x7B
        if c == 0x5B and key == b"data" and in_input:
            if index in data:
                raise _schema_error(f"inputs.{index}: key 'data' given twice")
            end = _array_end(body, i)
            data[index] = DataSpan(i, end)
            pieces += [body[copied:i], b"[]"]
            copied = pos = end
            key = None
            continue
        if c in b"[{":
            parent = key if stack and stack[-1][0] == 0x7B else None
            stack.append((c, parent))
            if len(stack) == 2 and stack[1] == (0x5B, b"inputs"):
                inputs_seen += 1
                if inputs_seen > 1:
                    raise _schema_error("key 'inputs' given twice")
            if c == 0x7B and len(stack) == 3 and stack[1] == (0x5B, b"inputs"):
                index += 1
        elif stack:
            stack.pop()
        key = None
    if not data:
        return SplitBody(body, {})
    pieces.append(body[copied:])
    return SplitBody(b"".join(pieces), data)


def flatten(data: list[Any]) -> list[Any]:
    """Row-major elements of nested lists (a list whose first item is not a list is
    taken as flat)."""
    if data and isinstance(data[0], list):
        out: list[Any] = []
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                out.append(item)
        return out
    return data


def _loads(text: bytes | memoryview, name: str) -> Any:
    """orjson, then the standard library for what orjson refuses but the wire accepts
    (NaN, Infinity, integers beyond 64 bits)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(bytes(text))
        except (ValueError, RecursionError) as e:
            raise _schema_error(f"input {name!r}: data is not valid JSON ({e})") from None


def _mismatch(name: str, shape: list[int], count: int, got: int) -> InvalidInput:
    return InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, got {got}")


def _elements(text: bytes | memoryview, commas: int, count: int) -> int:
    """Elements of a nested array with ``commas`` commas: one more than its commas,
    none if it holds nothing but brackets (``[]``, or ``[[], []]`` for a shape [2, 0])."""
    got = commas + 1
    if (commas == 0 or count == 0) and not bytes(text).translate(None, _STRUCTURE):
        got = 0
    return got


def decode_numbers(
    body: bytes,
    span: DataSpan,
    name: str,
    shape: list[int],
    datatype: str,
    dtype: np.dtype[Any],
    count: int,
) -> np.ndarray:
    """A numeric or BOOL ``data`` array (flat or nested) as a flat array of ``count``.

    Raises:
        InvalidInput: another element count, or elements that do not fit (400).
        SchemaViolation: the array is not valid JSON (422).
    """
    start, end = span.start, span.end
    if body.find(b'"', start, end) >= 0 or body.find(b"{", start, end) >= 0:
        what = "BOOL data must be true/false" if datatype == "BOOL" else "numeric data expected"
        raise InvalidInput(f"input {name!r}: data does not fit {datatype}: {what}")
    got = _elements(memoryview(body)[start:end], body.count(b",", start, end), count)
    if got != count:
        raise _mismatch(name, shape, count, got)
    out = np.empty(count, dtype=dtype)
    filled = 0
    while start < end and count:
        stop = body.find(b",", min(start + CHUNK_BYTES, end), end)
        stop = end if stop < 0 else stop
        chunk = body[start:stop].translate(_BRACKETS_AS_SPACES)
        start = stop + 1
        values = _loads(b"[" + chunk + b"]", name)
        if filled + len(values) > count:
            break
        try:
            if datatype == "BOOL":
                if not all(isinstance(x, bool) for x in values):
                    raise TypeError("BOOL data must be true/false")
            elif chunk.translate(None, _NUMBER_CHARS) and any(
                isinstance(x, bool) or x is None for x in values
            ):
                raise TypeError("numeric data expected")
            out[filled : filled + len(values)] = np.asarray(values, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidInput(f"input {name!r}: data does not fit {datatype}: {e}") from None
        filled += len(values)
    if filled != count:  # an empty element or a trailing comma: commas miscounted
        raise _schema_error(f"input {name!r}: data is not a JSON array of {datatype}")
    return out


def decode_strings(
    body: bytes, span: DataSpan, name: str, shape: list[int], count: int
) -> list[Any]:
    """A BYTES ``data`` array as a flat list of ``count`` strings, counted (strings
    collapsed) before any string is made.

    Raises:
        InvalidInput: another element count, or elements that are not strings (400).
        SchemaViolation: the array is not valid JSON (422).
    """
    view = memoryview(body)[span.start : span.end]
    rest = _STRING.sub(b'""', view)
    got = _elements(rest, rest.count(b","), count)
    if got != count:
        raise _mismatch(name, shape, count, got)
    if rest.translate(None, _STRUCTURE + b'"'):
        raise InvalidInput(f"input {name!r}: BYTES data must be strings")
    flat = flatten(_loads(view, name))
    if len(flat) != count or not all(isinstance(x, str) for x in flat):
        raise InvalidInput(f"input {name!r}: BYTES data must be strings")
    return flat
