"""The core kinds the manifests create, as the stand-in API server serves them.

ConfigMaps, PersistentVolumeClaims, Jobs, NetworkPolicies and PodDisruptionBudgets at
their REST paths: create (POST), server-side apply (``application/apply-patch+yaml``,
with ``managedFields`` through :mod:`tests.k8s.fake_ssa`, lists atomic), replace (PUT),
GET and DELETE. Every write is validated against the kubernetes client's model of the
kind: an undeclared field is a 400 as under ``fieldValidation=Strict`` (what kubectl and
serve-app send), a wrong type or a missing required field a 422 ``Invalid`` with one
cause per problem, as the API server answers. The update rules the manifests meet are
enforced: a Job's ``spec.template`` (and ``selector``, ``completionMode``,
``manualSelector``) is immutable, a claim's ``spec`` is immutable except
``resources.requests``, an ``immutable: true`` ConfigMap keeps its data.

Not modelled: defaulting (the real server adds a Job's controller-uid labels and
selector, a claim's volumeMode...), admission, status, garbage collection.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass
from typing import Any

from tests.k8s import fake_ssa as ssa


@dataclass(frozen=True)
class CoreKind:
    """One served kind: its REST group/version, plural, kind and client model."""

    api: str
    plural: str
    kind: str
    model: str

    @property
    def group(self) -> str:
        return self.api.split("/")[0] if "/" in self.api else ""

    @property
    def qualified(self) -> str:
        """``Job.batch``, ``ConfigMap``: how the server names the kind in messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


KINDS = (
    CoreKind("v1", "configmaps", "ConfigMap", "V1ConfigMap"),
    CoreKind("v1", "persistentvolumeclaims", "PersistentVolumeClaim", "V1PersistentVolumeClaim"),
    CoreKind("batch/v1", "jobs", "Job", "V1Job"),
    CoreKind("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", "V1NetworkPolicy"),
    CoreKind("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", "V1PodDisruptionBudget"),
)
_BY_PATH = {(k.api, k.plural): k for k in KINDS}
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<api>[^/]+/[^/]+))/namespaces/(?P<ns>[^/]+)/"
    r"(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$"
)
APPLY_PATCH = "application/apply-patch+yaml"
UNKNOWN = "field not declared in schema"
PVC_IMMUTABLE = (
    "Forbidden: spec is immutable after creation except resources.requests and "
    "volumeAttributesClassName for bound claims"
)
JOB_IMMUTABLE = ("template", "selector", "completionMode", "manualSelector")
"""Job spec fields the API server refuses to change (batch/v1 validation)."""


class CoreError(Exception):
    """An API error of the core store: code, reason, message, name, causes."""

    def __init__(
        self, code: int, reason: str, message: str, name: str = "",
        causes: list[dict[str, str]] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(code, reason, message, name, causes)
        self.code, self.reason, self.message, self.name = code, reason, message, name
        self.causes = causes or []


def match(path: str) -> tuple[CoreKind, str, str | None] | None:
    """(kind, namespace, name) of a core path this store serves, else ``None``."""
    m = _PATH.match(path)
    if m is None:
        return None
    kind = _BY_PATH.get((m["core"] or m["api"], m["plural"]))
    return (kind, m["ns"], m["name"]) if kind is not None else None


def model_errors(obj: dict[str, Any], kind: CoreKind) -> list[tuple[str, str]]:
    """(field, problem) of ``obj`` against the kubernetes client's model of ``kind``; an
    undeclared field's problem is ``UNKNOWN``."""
    import kubernetes.client
    from pydantic import ValidationError

    model = getattr(kubernetes.client, kind.model)
    try:
        model.model_validate(obj)
    except ValidationError as e:
        return [
            (
                ".".join(map(str, err["loc"])),
                UNKNOWN if err["type"] == "extra_forbidden" else err["msg"],
            )
            for err in e.errors()
        ]
    return []


class CoreStore:
    """Objects of the core kinds, keyed by (plural, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._rv = 5000

    def stored(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(plural, namespace, name)])

    def handle(
        self, kind: CoreKind, ns: str, name: str | None, method: str, ctype: str,
        body: Any, query: dict[str, str], manager: str, now: str,
    ) -> tuple[int, Any]:  # fmt: skip
        """One request; raises :class:`CoreError` for an error ``Status``. ``manager``:
        the field manager of a create or update (``fieldManager``, else the user agent)."""
        key = (kind.plural, ns, name or "")
        if name is None and method == "POST":
            obj = self._checked(kind, ns, body, None)
            key = (kind.plural, ns, obj["metadata"]["name"])
            if key in self.objects:
                raise CoreError(409, "AlreadyExists",
                                f'{kind.plural} "{key[2]}" already exists', key[2])  # fmt: skip
            ssa.record_update(None, obj, manager, now)
            return 201, self._insert(key, obj)
        if name is None:
            raise CoreError(405, "MethodNotAllowed", "the stand-in serves single objects")
        if method == "GET":
            return 200, copy.deepcopy(self._get(kind, key))
        if method == "DELETE":
            self._get(kind, key)
            del self.objects[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                         "details": {"name": name, "kind": kind.plural}}  # fmt: skip
        if method == "PUT":
            cur = self._get(kind, key)
            new = self._checked(kind, ns, body, name)
            ssa.record_update(cur, new, manager, now)
            return 200, self._update(kind, key, cur, new)
        if method == "PATCH" and ctype == APPLY_PATCH:
            if not query.get("fieldManager"):
                raise CoreError(400, "BadRequest", "fieldManager: Required value: is required "
                                "for apply patch")  # fmt: skip
            applied = self._checked(kind, ns, body, name)
            cur = self.objects.get(key)
            try:
                new = ssa.apply(cur, applied, manager, query.get("force") == "true", now)
            except ssa.ApplyConflict as e:
                raise CoreError(409, "Conflict", e.message(), name) from None
            new["metadata"]["name"] = name
            if cur is None:
                return 201, self._insert(key, new)
            return 200, self._update(kind, key, cur, new)
        raise CoreError(415, "UnsupportedMediaType", f"the stand-in does not take {ctype}")

    def _get(self, kind: CoreKind, key: tuple[str, str, str]) -> dict[str, Any]:
        if key not in self.objects:
            group = f".{kind.group}" if kind.group else ""
            raise CoreError(404, "NotFound", f'{kind.plural}{group} "{key[2]}" not found', key[2])
        return self.objects[key]

    def _checked(self, kind: CoreKind, ns: str, body: Any, name: str | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise CoreError(400, "BadRequest", "the object provided is not a JSON object")
        obj = copy.deepcopy(body)
        if obj.get("apiVersion") != kind.api or obj.get("kind") != kind.kind:
            got = f"{obj.get('apiVersion')} {obj.get('kind')}"
            raise CoreError(400, "BadRequest", f"expected {kind.api} {kind.kind}, got {got}")
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns or (name is not None and meta.get("name") != name):
            raise CoreError(400, "BadRequest", "the namespace or name of the object does not "
                            "match the request")  # fmt: skip
        obj.pop("status", None)
        for field in ("uid", "resourceVersion", "generation", "creationTimestamp",
                      "managedFields"):  # fmt: skip
            meta.pop(field, None)
        errors = model_errors(obj, kind)
        unknown = [f for f, problem in errors if problem == UNKNOWN]
        if unknown:  # kubectl and serve-app apply with fieldValidation=Strict
            fields = "\n".join(f".{f}: {UNKNOWN}" for f in unknown)
            where = f"{ns}/{meta.get('name')}; {kind.api}, Kind={kind.kind}"
            raise CoreError(
                400, "BadRequest", f"failed to create typed patch object ({where}): {fields}"
            )
        if errors:
            self._invalid(kind, meta.get("name", ""), [(f, p) for f, p in errors])
        return obj

    def _invalid(self, kind: CoreKind, name: str, problems: list[tuple[str, str]]) -> None:
        texts = [f"{field}: {problem}" for field, problem in problems]
        text = texts[0] if len(texts) == 1 else f"[{', '.join(texts)}]"
        raise CoreError(
            422, "Invalid", f'{kind.qualified} "{name}" is invalid: {text}', name,
            [{"reason": "FieldValueInvalid", "message": p, "field": f} for f, p in problems],
        )  # fmt: skip

    def _insert(self, key: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        obj["metadata"].update(namespace=key[1], uid=str(uuid.uuid4()),
                               resourceVersion=str(self._rv), generation=1)  # fmt: skip
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def _update(
        self, kind: CoreKind, key: tuple[str, str, str], cur: dict[str, Any],
        new: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        problems = immutable_changes(kind, cur, new)
        if problems:
            self._invalid(kind, key[2], problems)
        for field in ("namespace", "uid", "generation"):
            new["metadata"][field] = cur["metadata"][field]
        if new == cur:
            return copy.deepcopy(cur)
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        if new.get("spec") != cur.get("spec"):
            new["metadata"]["generation"] = cur["metadata"]["generation"] + 1
        self.objects[key] = new
        return copy.deepcopy(new)


def immutable_changes(
    kind: CoreKind, cur: dict[str, Any], new: dict[str, Any]
) -> list[tuple[str, str]]:
    """(field, problem) for each change the API server's update validation refuses."""
    before, after = cur.get("spec") or {}, new.get("spec") or {}
    if kind.kind == "Job":
        return [
            (f"spec.{f}", "Invalid value: field is immutable")
            for f in JOB_IMMUTABLE
            if before.get(f) != after.get(f)
        ]
    if kind.kind == "PersistentVolumeClaim":
        strip = [copy.deepcopy(s) for s in (before, after)]
        for s in strip:
            s.get("resources", {}).pop("requests", None)
            s.pop("volumeAttributesClassName", None)
            if not s.get("resources"):
                s.pop("resources", None)
        if strip[0] != strip[1]:
            return [("spec", PVC_IMMUTABLE)]
    if kind.kind == "ConfigMap" and cur.get("immutable"):
        changed = [f for f in ("data", "binaryData", "immutable") if cur.get(f) != new.get(f)]
        return [(f, "Forbidden: field is immutable when `immutable` is set") for f in changed]
    return []
