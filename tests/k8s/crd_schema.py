"""The vendored KubeRay v1.7.0 CRD schemas, and what the API server does with them.

Used by the manifest tests (does a rendered object match the CRD?) and by the stand-in
API server (which prunes and validates what it stores as the real one does for a
structural CRD schema).

Covered: pruning of fields the schema does not declare (``x-kubernetes-preserve-unknown-
fields`` stops it), and OpenAPI v3 validation (types, ``required``, ``enum``, formats,
bounds) with errors phrased as the API server phrases them: one ``field.Error`` per
violation, ``spec.a.b[0].c: Required value``. Not covered: CEL rules
(``x-kubernetes-validations``, three in these CRDs) and defaulting (these CRDs declare
no defaults the tests depend on).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = Path(
    os.environ.get("SERVE_APP_KUBERAY_CRDS") or REPO_ROOT.parent / "shared" / "kuberay-crds"
)
"""KubeRay v1.7.0's ``ray.io_rayservices.yaml`` and ``ray.io_rayclusters.yaml``: shared
data beside the clone (``shared/kuberay-crds``, see SOURCE.md there), or the folder that
``SERVE_APP_KUBERAY_CRDS`` names (docs/tests.md says where to get them)."""
MISSING_CRDS = (
    f"KubeRay v1.7.0 CRD files not in {CRD_DIR}: set SERVE_APP_KUBERAY_CRDS (docs/tests.md)"
)
"""The one-line reason of every test skipped without the CRD files."""


def crds_available() -> bool:
    """Whether the CRD files are there (see ``CRD_DIR``)."""
    return all((CRD_DIR / f"ray.io_{k}.yaml").is_file() for k in ("rayservices", "rayclusters"))


def skip_without_crds() -> None:
    """Skip the calling test, naming where the CRD files were looked for."""
    if not crds_available():
        pytest.skip(MISSING_CRDS)


needs_crds = pytest.mark.skipif(not crds_available(), reason=MISSING_CRDS)
"""Marks a test that needs the CRD files."""


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """``openAPIV3Schema`` of the v1 version of ``kind`` (RayService, RayCluster)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 1 MB of YAML: 0.3 s in C, 6 s not
    text = (CRD_DIR / f"ray.io_{kind.lower()}s.yaml").read_text(encoding="utf-8")
    crd = yaml.load(text, Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return dict(version["schema"]["openAPIV3Schema"])


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths (``.spec.foo``) of fields the schema does not declare.

    The API server prunes them (with a warning) or, under ``fieldValidation=Strict``,
    rejects the request naming them. ``metadata`` is ObjectMeta's business, not the CRD's.
    """
    return prune(copy.deepcopy(obj), schema, path)


def prune(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Remove undeclared fields from ``obj`` in place; returns their paths."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, dict) and "properties" in schema:
        props = schema["properties"]
        for key in list(obj):
            sub = f"{path}.{key}"
            if key not in props:
                found.append(sub)
                del obj[key]
            elif not (path == "" and key == "metadata"):
                found += prune(obj[key], props[key], sub)
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            found += prune(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, value in enumerate(obj):
            found += prune(value, schema["items"], f"{path}[{i}]")
    return found


@dataclass(frozen=True)
class FieldError:
    """One ``metav1.StatusCause`` of a 422 ``Invalid`` answer."""

    reason: str
    """FieldValueRequired, FieldValueNotSupported, FieldValueTypeInvalid, FieldValueInvalid."""
    message: str
    """The detail without the field, e.g. ``Required value``."""
    field: str
    """``spec.a.b[0].c``."""

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


_JSON_TYPES = {"dict": "object", "str": "string", "list": "array", "NoneType": "null",
               "int": "integer", "float": "number", "bool": "boolean"}  # fmt: skip


def _field(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _quote(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


@functools.cache
def _validator(kind: str) -> Any:
    """A JSON Schema validator of ``kind`` that checks the formats the CRDs use."""
    import jsonschema

    checker = jsonschema.FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if isinstance(value, str):
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
        return True

    @checker.checks("int32")
    def _int32(value: object) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    return jsonschema.Draft202012Validator(crd_schema(kind), format_checker=checker)


def validate(obj: dict[str, Any], kind: str | None = None) -> list[FieldError]:
    """Schema violations of ``obj`` (pruned or not), in the API server's words."""
    validator = _validator(kind or obj["kind"])
    errors: list[FieldError] = []
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        at = _field(e.absolute_path)
        if e.validator == "required":
            missing = e.message.split("'")[1]
            errors.append(
                FieldError(
                    "FieldValueRequired", "Required value", _field([*e.absolute_path, missing])
                )
            )
        elif e.validator == "enum":
            allowed = ", ".join(_quote(v) for v in e.validator_value)
            errors.append(
                FieldError(
                    "FieldValueNotSupported",
                    f"Unsupported value: {_quote(e.instance)}: supported values: {allowed}",
                    at,
                )
            )
        elif e.validator == "type":
            got = _JSON_TYPES.get(type(e.instance).__name__, type(e.instance).__name__)
            errors.append(
                FieldError(
                    "FieldValueTypeInvalid",
                    f'Invalid value: "{got}": {at} in body must be of type {e.validator_value}: '
                    f'"{got}"',
                    at,
                )
            )
        else:
            errors.append(FieldError("FieldValueInvalid", f"Invalid value: {e.message}", at))
    return errors


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """Schema violations and unknown fields of a ray.io/v1 object, for manifest tests."""
    schema = crd_schema(obj["kind"])
    return [str(e) for e in validate(obj)] + [
        f"unknown field {p}" for p in unknown_fields(obj, schema)
    ]
