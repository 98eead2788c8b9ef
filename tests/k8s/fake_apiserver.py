"""A stand-in Kubernetes API server for ``ray.io/v1`` RayServices.

A real HTTP server on 127.0.0.1 (ephemeral port, one thread per request) that speaks
the API server's REST paths and answers errors with ``Status`` objects. It is strict
where the real one is, so a client that passes here does not lean on leniency:

- ``uid``/``resourceVersion``/``generation``/``creationTimestamp`` as for a CRD with a
  ``status`` subresource: spec writes ignore ``status``, status writes ignore the rest,
  ``generation`` moves only with the spec, a no-op write keeps the ``resourceVersion``.
- The vendored KubeRay v1.7.0 CRD schema (when ``shared/kuberay-crds`` is beside the
  clone): undeclared fields are pruned with a ``Warning`` header, or rejected with 400
  under ``fieldValidation=Strict``; violations are 422 ``Invalid`` with one cause per
  field (:mod:`tests.k8s.crd_schema`).
- JSON merge patch, and server-side apply (``application/apply-patch+yaml``) with
  ``fieldManager``, ``force`` and ``managedFields`` (:mod:`tests.k8s.fake_ssa`); a
  client-side ``kubectl apply`` (:func:`client_side_apply`) owns what it wrote as manager
  ``kubectl-client-side-apply`` (operation Update), as on a real server.
- Finalizers: DELETE of an object with finalizers sets ``deletionTimestamp`` and
  returns the object; it goes when the last finalizer is removed; no finalizer can be
  added to an object being deleted.

- The other kinds the overlays create (ConfigMap, PersistentVolumeClaim, Job,
  NetworkPolicy, PodDisruptionBudget) at their core paths, validated against the
  kubernetes client's models with their update rules (a Job's template is immutable):
  :mod:`tests.k8s.fake_core`. The installed ``rayservices.ray.io`` CRD is served
  read-only from :attr:`FakeApiServer.crds` (``serve-app k8s apply``'s version check).

Not implemented: JSON patch and strategic merge patch (415, as a CRD answers the last),
watch, label selectors, dry run, CEL validation rules.

Tests drive the operator's side with :meth:`FakeApiServer.set_status`,
:meth:`FakeApiServer.script_status` and the finalizer hooks, with statuses built by
:mod:`tests.k8s.kuberay_status`.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import uuid
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from tests.k8s import crd_schema as crds
from tests.k8s import fake_core as core
from tests.k8s import fake_ssa as ssa

GROUP, VERSION, PLURAL, KIND = "ray.io", "v1", "rayservices", "RayService"
RESOURCE = f"{PLURAL}.{GROUP}"
_PATH = re.compile(
    rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/(?P<ns>[^/]+)/{PLURAL}"
    r"(?:/(?P<name>[^/]+)(?P<sub>/status)?)?$"
)
_CRD_PATH = re.compile(
    r"^/apis/apiextensions\.k8s\.io/v1/customresourcedefinitions/(?P<name>[^/]+)$"
)
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
_IMMUTABLE_META = ("uid", "creationTimestamp", "generation", "namespace", "name")
# Set by the server on create, whatever the request says.
_SERVER_META = ("uid", "creationTimestamp", "generation", "managedFields", "deletionTimestamp",
                "deletionGracePeriodSeconds")  # fmt: skip
FIELD_VALIDATION = ("Ignore", "Warn", "Strict")


class ApiError(Exception):
    """Raised inside the server; becomes a ``Status`` response."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        name: str | None = None,
        causes: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(code, reason, message, name, causes)
        self.code, self.reason, self.message, self.name = code, reason, message, name
        self.causes = causes or []

    def to_status(self) -> dict[str, Any]:
        details: dict[str, Any] = {"name": self.name, "group": GROUP, "kind": PLURAL}
        if not self.name:
            details = {}
        if self.causes:
            details = {"name": self.name or "", "group": GROUP, "kind": KIND,
                       "causes": self.causes}  # fmt: skip
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": details,
            "code": self.code,
        }


def not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{RESOURCE} "{name}" not found', name)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def api_for(url: str, token: str) -> Any:
    """A ``CustomObjectsApi`` for ``url`` with a bearer token, as a kubeconfig would set."""
    from kubernetes.client import ApiClient, Configuration, CustomObjectsApi

    cfg = Configuration()
    cfg.host = url
    cfg.api_key = {"BearerToken": f"Bearer {token}"}
    return CustomObjectsApi(ApiClient(cfg))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Request:
    """One request as the handler parsed it."""

    def __init__(self, method: str, path: str, ctype: str, body: Any,
                 query: dict[str, str] | None = None, user_agent: str = "") -> None:  # fmt: skip
        self.method, self.path, self.ctype, self.body = method, path, ctype, body
        self.query = query or {}
        # The API server's default field manager: the user agent up to the first "/".
        self.manager = self.query.get("fieldManager") or user_agent.split("/")[0] or "unknown"
        self.warnings: list[str] = []


class FakeApiServer:
    """The server plus its store. Use :meth:`start` / :meth:`stop` (or a fixture).

    Args:
        token: Bearer token every request must carry (``None``: no authentication).
        schema: Validate and prune against the vendored CRD (default: when present).
    """

    def __init__(self, token: str | None = None, schema: bool | None = None) -> None:
        self.token = token
        self.schema = crds.crds_available() if schema is None else schema
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.core = core.CoreStore()
        """ConfigMaps, claims, Jobs, NetworkPolicies, PDBs (:mod:`tests.k8s.fake_core`)."""
        self.crds: dict[str, dict[str, Any]] = {RESOURCE: installed_crd(self.schema)}
        """CustomResourceDefinitions served read-only by name (tests swap in an older one)."""
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self.queries: list[dict[str, str]] = []  # query parameters, in request order
        self._scripts: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self._faults: deque[tuple[str, ApiError]] = deque()
        self._warnings: list[tuple[str, str]] = []
        self._rv = 1000
        self._lock = threading.RLock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # Test hooks: what KubeRay (or a misbehaving server) would do.
    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Replace the status as KubeRay's ``Status().Update`` does; returns the object.

        The status must match the CRD exactly (no field the server would prune): a
        builder that emits another shape would test a status KubeRay never writes.
        """
        with self._lock:
            obj = self._get(namespace, name)
            self._check_operator_status(status)
            new = {**copy.deepcopy(obj), "status": copy.deepcopy(status)}
            return self._store(namespace, name, obj, new)

    def script_status(self, namespace: str, name: str, statuses: list[dict[str, Any]]) -> None:
        """Each later read of the object first applies the next of ``statuses``."""
        for status in statuses:
            self._check_operator_status(status)
        with self._lock:
            self._scripts[(namespace, name)] = deque(copy.deepcopy(statuses))

    def add_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        """Add a finalizer, as an operator does on its first reconcile."""
        with self._lock:
            obj = self._get(namespace, name)
            new = copy.deepcopy(obj)
            new["metadata"].setdefault("finalizers", []).append(finalizer)
            self._store(namespace, name, obj, new)

    def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        """Remove a finalizer; an object being deleted goes with its last one."""
        with self._lock:
            obj = self._get(namespace, name)
            new = copy.deepcopy(obj)
            new["metadata"]["finalizers"].remove(finalizer)
            if not new["metadata"]["finalizers"]:
                del new["metadata"]["finalizers"]
            self._store(namespace, name, obj, new)

    def fail_next(self, method: str, code: int, reason: str, message: str) -> None:
        """The next request with ``method`` gets this error ``Status`` instead."""
        with self._lock:
            self._faults.append((method, ApiError(code, reason, message)))

    def warn_next(self, method: str, text: str) -> None:
        """The next response to ``method`` carries this ``Warning`` (e.g. a deprecation)."""
        with self._lock:
            self._warnings.append((method, text))

    def stored(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._get(namespace, name))

    def exists(self, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace, name) in self.objects

    # REST verbs. Each returns (HTTP code, body) or raises ApiError.
    def handle(self, req: Request) -> tuple[int, Any]:
        crd = _CRD_PATH.match(req.path)
        if crd is not None:
            return self._read_crd(req, crd["name"])
        served = core.match(req.path)
        if served is not None:
            kind, ns, name = served
            with self._lock:
                try:
                    return self.core.handle(kind, ns, name, req.method, req.ctype, req.body,
                                            req.query, req.manager, _now())  # fmt: skip
                except core.CoreError as e:
                    raise ApiError(e.code, e.reason, e.message, e.name or None, e.causes) from None
        m = _PATH.match(req.path)
        if m is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, name, sub = m["ns"], m["name"], bool(m["sub"])
        method, body = req.method, req.body
        validation = req.query.get("fieldValidation", "Warn")
        if validation not in FIELD_VALIDATION:
            raise ApiError(
                400,
                "BadRequest",
                f'fieldValidation: Unsupported value: "{validation}": supported values: '
                '"Ignore", "Strict", "Warn"',
            )
        with self._lock:
            req.warnings += [text for m, text in self._warnings if m == method]
            self._warnings = [(m, text) for m, text in self._warnings if m != method]
            for i, (fault_method, err) in enumerate(self._faults):
                if fault_method == method:
                    del self._faults[i]
                    raise err
            if name is None:
                if method == "GET":
                    return 200, self._list(ns)
                if method == "POST":
                    return 201, self._create(ns, body, req)
            elif method == "GET":
                self._advance_script(ns, name)
                return 200, copy.deepcopy(self._get(ns, name))
            elif method == "PUT":
                return 200, self._update(ns, name, body, sub, req, replace=True)
            elif method == "PATCH" and req.ctype == APPLY_PATCH and not sub:
                return self._apply(ns, name, body, req)
            elif method == "PATCH":
                if req.ctype != MERGE_PATCH:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media "
                        "types include: application/json-patch+json, "
                        "application/merge-patch+json, application/apply-patch+yaml",
                    )
                if "force" in req.query:
                    raise ApiError(
                        422, "Invalid", "force: Forbidden: may not be specified for non-apply patch"
                    )
                patched = merge_patch(self._get(ns, name), body)
                return 200, self._update(ns, name, patched, sub, req, replace=False)
            elif method == "DELETE" and not sub:
                return self._delete(ns, name)
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    def _read_crd(self, req: Request, name: str) -> tuple[int, Any]:
        if req.method != "GET":
            raise ApiError(405, "MethodNotAllowed", "the stand-in serves CRDs read-only")
        with self._lock:
            for i, (fault_method, err) in enumerate(self._faults):
                if fault_method == "GET":
                    del self._faults[i]
                    raise err
            if name not in self.crds:
                raise ApiError(
                    404, "NotFound",
                    f'customresourcedefinitions.apiextensions.k8s.io "{name}" not found', name,
                )  # fmt: skip
            return 200, copy.deepcopy(self.crds[name])

    def _get(self, ns: str, name: str) -> dict[str, Any]:
        try:
            return self.objects[(ns, name)]
        except KeyError:
            raise not_found(name) from None

    def _list(self, ns: str) -> dict[str, Any]:
        items = [copy.deepcopy(o) for (n, _), o in sorted(self.objects.items()) if n == ns]
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": f"{KIND}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _check_type(self, ns: str, obj: Any, name: str | None) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the object provided is not a JSON object")
        if obj.get("apiVersion") != f"{GROUP}/{VERSION}" or obj.get("kind") != KIND:
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data "
                f"({obj.get('apiVersion')}) does not match the expected API version "
                f"({GROUP}/{VERSION})",
            )
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not "
                "match the namespace sent on the request",
            )
        if name is not None and meta.get("name") != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) "
                f"does not match the name on the URL ({name})",
            )
        return obj

    def _schema_check(self, obj: dict[str, Any], req: Request, apply: bool = False) -> None:
        """Prune undeclared fields (per ``fieldValidation``), then validate: as the real
        server does for a structural CRD schema."""
        if not self.schema:
            return
        unknown = crds.prune(obj, crds.crd_schema(KIND))
        validation = req.query.get("fieldValidation", "Warn")
        if unknown and validation == "Strict":
            if apply:  # the apply path types the patch first, and says so
                fields = "\n".join(f"{p}: field not declared in schema" for p in unknown)
                raise ApiError(
                    400,
                    "BadRequest",
                    f"failed to create typed patch object ({obj['metadata'].get('namespace')}/"
                    f"{obj['metadata'].get('name')}; {GROUP}/{VERSION}, Kind={KIND}): {fields}",
                )
            fields = ", ".join(f'unknown field "{p[1:]}"' for p in unknown)
            raise ApiError(400, "BadRequest", f"strict decoding error: {fields}")
        if validation == "Warn":
            req.warnings += [f'unknown field "{p[1:]}"' for p in unknown]
        errors = crds.validate(obj, KIND)
        if errors:
            name = obj["metadata"].get("name", "")
            text = str(errors[0]) if len(errors) == 1 else f"[{', '.join(map(str, errors))}]"
            raise ApiError(
                422, "Invalid", f'{KIND}.{GROUP} "{name}" is invalid: {text}', name,
                [e.cause() for e in errors],
            )  # fmt: skip

    def _ssa_schema(self) -> dict[str, Any] | None:
        """The schema whose map lists server-side apply merges by key (None: all atomic)."""
        return crds.crd_schema(KIND) if self.schema else None

    def _check_operator_status(self, status: dict[str, Any] | None) -> None:
        if not self.schema or status is None:  # None: the status is removed
            return
        obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {}, "status": status}
        problems = [str(e) for e in crds.validate(obj, KIND)]
        problems += crds.unknown_fields(obj, crds.crd_schema(KIND))
        assert not problems, f"this status does not match the KubeRay CRD: {problems}"

    def _create(self, ns: str, body: Any, req: Request) -> dict[str, Any]:
        obj = self._check_type(ns, copy.deepcopy(body), None)
        meta = obj["metadata"]
        if not meta.get("name"):
            raise ApiError(
                422,
                "Invalid",
                f'{KIND}.{GROUP} "" is invalid: metadata.name: '
                "Required value: name or generateName is required",
            )
        if meta.get("resourceVersion"):
            raise ApiError(
                400, "BadRequest", "resourceVersion should not be set on objects to be created"
            )
        if (ns, meta["name"]) in self.objects:
            raise ApiError(
                409, "AlreadyExists", f'{RESOURCE} "{meta["name"]}" already exists', meta["name"]
            )
        obj.pop("status", None)  # the status subresource resets it on create
        for key in _SERVER_META:
            meta.pop(key, None)
        self._schema_check(obj, req)
        return self._insert(ns, obj, req)

    def _insert(self, ns: str, obj: dict[str, Any], req: Request) -> dict[str, Any]:
        meta = obj["metadata"]
        self._rv += 1
        meta.update(
            namespace=ns,
            uid=str(uuid.uuid4()),
            resourceVersion=str(self._rv),
            generation=1,
            creationTimestamp=_now(),
        )
        if req.ctype != APPLY_PATCH:
            ssa.record_update(None, obj, req.manager, _now(), self._ssa_schema())
        self.objects[(ns, meta["name"])] = obj
        return copy.deepcopy(obj)

    def _apply(self, ns: str, name: str, body: Any, req: Request) -> tuple[int, Any]:
        if not req.query.get("fieldManager"):
            raise ApiError(
                400,
                "BadRequest",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                "required for apply patch",
            )
        applied = self._check_type(ns, copy.deepcopy(body), name)
        applied.pop("status", None)
        for key in ("uid", "generation", "creationTimestamp", "managedFields"):
            if key in applied["metadata"]:
                raise ApiError(
                    400, "BadRequest",
                    f"metadata.{key}: Invalid value: must not be set in an apply configuration",
                )  # fmt: skip
        self._schema_check(applied, req, apply=True)
        force = req.query.get("force") == "true"
        cur = self.objects.get((ns, name))
        rv = applied["metadata"].pop("resourceVersion", None)
        if cur is None:
            if rv:
                raise not_found(name)
            new = ssa.apply(None, applied, req.manager, force, _now(), self._ssa_schema())
            new["metadata"]["name"] = name
            return 201, self._insert(ns, new, req)
        self._check_precondition(cur, name, rv)
        try:
            new = ssa.apply(cur, applied, req.manager, force, _now(), self._ssa_schema())
        except ssa.ApplyConflict as e:
            raise ApiError(409, "Conflict", e.message(), name) from None
        self._check_finalizers(cur, new, name)
        return 200, self._store(ns, name, cur, new)

    def _check_precondition(self, cur: dict[str, Any], name: str, rv: str | None) -> None:
        if rv and rv != cur["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {RESOURCE} "
                f'"{name}": the object has been modified; please apply your '
                "changes to the latest version and try again",
                name,
            )

    def _check_finalizers(self, cur: dict[str, Any], new: dict[str, Any], name: str) -> None:
        if "deletionTimestamp" not in cur["metadata"]:
            return
        added = set(new["metadata"].get("finalizers") or ()) - set(
            cur["metadata"].get("finalizers") or ()
        )
        if added:
            raise ApiError(
                422, "Invalid",
                f'{KIND}.{GROUP} "{name}" is invalid: metadata.finalizers: Forbidden: no new '
                "finalizers can be added if the object is being deleted, found new finalizers "
                f"{sorted(added)}",
                name,
            )  # fmt: skip

    def _update(
        self, ns: str, name: str, new: Any, status_only: bool, req: Request, replace: bool
    ) -> Any:
        cur = self._get(ns, name)
        new = self._check_type(ns, copy.deepcopy(new), name)
        rv = new["metadata"].get("resourceVersion")
        if replace and not rv:
            raise ApiError(
                422,
                "Invalid",
                f'{KIND}.{GROUP} "{name}" is invalid: '
                "metadata.resourceVersion: Invalid value: 0x0: must be specified "
                "for an update",
            )
        self._check_precondition(cur, name, rv)
        if status_only:
            new = {**copy.deepcopy(cur), "status": new.get("status")}
        else:
            for key in _IMMUTABLE_META:
                new["metadata"][key] = cur["metadata"][key]
            for key in ("managedFields", "deletionTimestamp", "deletionGracePeriodSeconds"):
                new["metadata"].pop(key, None)
                if key in cur["metadata"]:
                    new["metadata"][key] = copy.deepcopy(cur["metadata"][key])
            new.pop("status", None)
            if "status" in cur:
                new["status"] = copy.deepcopy(cur["status"])
            self._check_finalizers(cur, new, name)
        self._schema_check(new, req)
        if not status_only:
            ssa.record_update(cur, new, req.manager, _now(), self._ssa_schema())
        return self._store(ns, name, cur, new)

    def _delete(self, ns: str, name: str) -> tuple[int, Any]:
        obj = self._get(ns, name)
        if obj["metadata"].get("finalizers"):
            # Graceful: the object stays, marked, until its finalizers are removed.
            if "deletionTimestamp" not in obj["metadata"]:
                new = copy.deepcopy(obj)
                new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
                # Marking for deletion is a spec-level change: generation moves.
                new["metadata"]["generation"] = obj["metadata"]["generation"] + 1
                obj = self._store(ns, name, obj, new)
            return 200, copy.deepcopy(obj)
        del self.objects[(ns, name)]
        self._scripts.pop((ns, name), None)
        details = {"name": name, "group": GROUP, "kind": PLURAL, "uid": obj["metadata"]["uid"]}
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _store(self, ns: str, name: str, cur: dict[str, Any], new: dict[str, Any]) -> Any:
        if new.get("status") is None:
            new.pop("status", None)
        new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        if "deletionTimestamp" in new["metadata"] and not new["metadata"].get("finalizers"):
            del self.objects[(ns, name)]  # the last finalizer is gone
            self._scripts.pop((ns, name), None)
            self._rv += 1
            new["metadata"]["resourceVersion"] = str(self._rv)
            return copy.deepcopy(new)
        if new == cur:  # a no-op write: nothing stored, same resourceVersion
            return copy.deepcopy(cur)
        ignored = ("metadata", "status")
        if {k: v for k, v in new.items() if k not in ignored} != {
            k: v for k, v in cur.items() if k not in ignored
        }:
            new["metadata"]["generation"] = cur["metadata"]["generation"] + 1
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[(ns, name)] = new
        return copy.deepcopy(new)

    def _advance_script(self, ns: str, name: str) -> None:
        script = self._scripts.get((ns, name))
        if script and (ns, name) in self.objects:
            obj = self.objects[(ns, name)]
            self._store(ns, name, obj, {**copy.deepcopy(obj), "status": script.popleft()})


def _make_handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, Nagle holds the body
            # until the client's delayed ACK (about 40 ms a request).
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            path, _, query = self.path.partition("?")
            params = {k: v[-1] for k, v in parse_qs(query).items()}
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            server.requests.append((self.command, path, ctype))
            server.queries.append(params)
            req = Request(self.command, path, ctype, None, params,
                          self.headers.get("User-Agent") or "")  # fmt: skip
            try:
                if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                try:
                    req.body = json.loads(raw) if raw else None
                except ValueError as e:
                    raise ApiError(400, "BadRequest", f"invalid JSON in the body: {e}") from e
                code, out = server.handle(req)
            except ApiError as e:
                code, out = e.code, e.to_status()
            data = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            for warning in req.warnings:
                self.send_header("Warning", f'299 - "{warning}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler


def installed_crd(schema: bool = True) -> dict[str, Any]:
    """The ``rayservices.ray.io`` CRD the stand-in serves: the vendored KubeRay v1.7.0
    one, or (``schema`` False, or the files absent) one that declares any field."""
    if schema and crds.crds_available():
        versions = [{"name": VERSION, "served": True, "storage": True,
                     "schema": {"openAPIV3Schema": crds.crd_schema(KIND)}}]  # fmt: skip
    else:
        open_schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        versions = [{"name": VERSION, "served": True, "storage": True,
                     "schema": {"openAPIV3Schema": open_schema}}]  # fmt: skip
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": RESOURCE},
        "spec": {"group": GROUP, "names": {"kind": KIND, "plural": PLURAL},
                 "scope": "Namespaced", "versions": versions},
    }  # fmt: skip


def rayservice_manifest(
    name: str = "demo", image: str = "rayproject/ray:2.60.0-py311", route: str = "/", **meta: Any
) -> dict[str, Any]:
    """A small ray.io/v1 RayService; ``image`` is cluster spec, ``route`` is Serve config."""
    apps = [{"name": "embed", "import_path": "serve_app.app:build_app", "route_prefix": route}]
    head = {"name": "ray-head", "image": image}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "labels": {"app": "serve-app"}, **meta},
        "spec": {
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": json.dumps({"applications": apps}),
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [head]}},
                },
            },
        },
    }


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
CLIENT_SIDE_APPLY = "kubectl-client-side-apply"


def _three_way(original: Any, modified: Any, current: Any) -> Any:
    """kubectl's three-way JSON merge patch (a CRD has no strategic merge): set what
    ``modified`` changes against ``current``, delete what ``original`` had and
    ``modified`` dropped; lists are replaced whole."""
    if not (isinstance(modified, dict) and isinstance(current, dict)):
        return copy.deepcopy(modified)
    original = original if isinstance(original, dict) else {}
    patch: dict[str, Any] = {k: None for k in original if k not in modified and k in current}
    for k, v in modified.items():
        if k not in current:
            patch[k] = copy.deepcopy(v)
        elif current[k] != v:
            sub = _three_way(original.get(k), v, current[k])
            if sub != {}:
                patch[k] = sub
    return patch


def client_side_apply(url: str, token: str, namespace: str, manifest: dict[str, Any]) -> None:
    """What ``kubectl apply`` (client-side, the default) sends for a RayService: a create,
    or a three-way merge patch against its last-applied annotation, both as field manager
    ``kubectl-client-side-apply`` (operation Update: it owns every field it wrote)."""
    from kubernetes.client.exceptions import ApiException

    api = api_for(url, token)
    body = copy.deepcopy(manifest)
    annotations = body.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[LAST_APPLIED] = json.dumps(manifest, sort_keys=True)
    name = body["metadata"]["name"]
    args = (GROUP, VERSION, namespace, PLURAL)
    try:
        current = api.get_namespaced_custom_object(*args, name)
    except ApiException as e:
        if e.status != 404:
            raise
        api.create_namespaced_custom_object(*args, body, field_manager=CLIENT_SIDE_APPLY)
        return
    original = json.loads((current["metadata"].get("annotations") or {}).get(LAST_APPLIED, "{}"))
    patch = _three_way(original, body, current)
    api.patch_namespaced_custom_object(
        *args, name, patch, field_manager=CLIENT_SIDE_APPLY, _content_type=MERGE_PATCH
    )


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
