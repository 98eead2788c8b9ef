"""A stand-in Kubernetes API server for ``ray.io/v1`` RayServices, and KubeRay statuses.

A real HTTP server on 127.0.0.1 (ephemeral port, one thread per request) that speaks
the API server's REST paths, answers errors with ``Status`` objects, keeps
``uid``/``resourceVersion``/``generation``/``creationTimestamp`` like the API server
does for a CRD with a ``status`` subresource (spec writes ignore ``status``, status
writes ignore the rest, ``generation`` moves only with the spec, a no-op write keeps
the ``resourceVersion``), and applies JSON merge patches.

Not implemented: JSON patch, server-side apply and strategic merge patch (answered 415,
as a CRD answers the last), watch, label selectors, dry run, finalizers.

Tests drive the "operator" side with :meth:`FakeApiServer.set_status` or
:meth:`FakeApiServer.script_status`, built from the KubeRay v1.7 status builders below.
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

GROUP, VERSION, PLURAL, KIND = "ray.io", "v1", "rayservices", "RayService"
RESOURCE = f"{PLURAL}.{GROUP}"
_PATH = re.compile(
    rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/(?P<ns>[^/]+)/{PLURAL}"
    r"(?:/(?P<name>[^/]+)(?P<sub>/status)?)?$"
)
MERGE_PATCH = "application/merge-patch+json"
_IMMUTABLE_META = ("uid", "creationTimestamp", "generation", "namespace", "name")
T0 = "2026-01-05T10:00:00Z"


class ApiError(Exception):
    """Raised inside the server; becomes a ``Status`` response."""

    def __init__(self, code: int, reason: str, message: str, name: str | None = None) -> None:
        super().__init__(code, reason, message, name)
        self.code, self.reason, self.message, self.name = code, reason, message, name

    def to_status(self) -> dict[str, Any]:
        details = {"name": self.name, "group": GROUP, "kind": PLURAL} if self.name else {}
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


class FakeApiServer:
    """The server plus its store. Use :meth:`start` / :meth:`stop` (or a fixture)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self._scripts: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self._faults: deque[tuple[str, ApiError]] = deque()
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
        """Replace the status as KubeRay's ``Status().Update`` does; returns the object."""
        with self._lock:
            obj = self._get(namespace, name)
            new = {**copy.deepcopy(obj), "status": copy.deepcopy(status)}
            return self._store(namespace, name, obj, new)

    def script_status(self, namespace: str, name: str, statuses: list[dict[str, Any]]) -> None:
        """Each later read of the object first applies the next of ``statuses``."""
        with self._lock:
            self._scripts[(namespace, name)] = deque(copy.deepcopy(statuses))

    def fail_next(self, method: str, code: int, reason: str, message: str) -> None:
        """The next request with ``method`` gets this error ``Status`` instead."""
        with self._lock:
            self._faults.append((method, ApiError(code, reason, message)))

    def stored(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._get(namespace, name))

    # REST verbs. Each returns (HTTP code, body) or raises ApiError.
    def handle(self, method: str, path: str, ctype: str, body: Any) -> tuple[int, Any]:
        m = _PATH.match(path)
        if m is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, name, sub = m["ns"], m["name"], bool(m["sub"])
        with self._lock:
            for i, (fault_method, err) in enumerate(self._faults):
                if fault_method == method:
                    del self._faults[i]
                    raise err
            if name is None:
                if method == "GET":
                    return 200, self._list(ns)
                if method == "POST":
                    return 201, self._create(ns, body)
            elif method == "GET":
                self._advance_script(ns, name)
                return 200, copy.deepcopy(self._get(ns, name))
            elif method == "PUT":
                return 200, self._update(ns, name, body, sub, replace=True)
            elif method == "PATCH":
                if ctype != MERGE_PATCH:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media "
                        "types include: application/json-patch+json, "
                        "application/merge-patch+json, application/apply-patch+yaml",
                    )
                patched = merge_patch(self._get(ns, name), body)
                return 200, self._update(ns, name, patched, sub, replace=False)
            elif method == "DELETE" and not sub:
                obj = self._get(ns, name)
                del self.objects[(ns, name)]
                self._scripts.pop((ns, name), None)
                details = {
                    "name": name,
                    "group": GROUP,
                    "kind": PLURAL,
                    "uid": obj["metadata"]["uid"],
                }
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

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

    def _create(self, ns: str, body: Any) -> dict[str, Any]:
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
        self._rv += 1
        meta.update(
            namespace=ns,
            uid=str(uuid.uuid4()),
            resourceVersion=str(self._rv),
            generation=1,
            creationTimestamp=_now(),
        )
        self.objects[(ns, meta["name"])] = obj
        return copy.deepcopy(obj)

    def _update(self, ns: str, name: str, new: Any, status_only: bool, replace: bool) -> Any:
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
        if rv and rv != cur["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {RESOURCE} "
                f'"{name}": the object has been modified; please apply your '
                "changes to the latest version and try again",
                name,
            )
        if status_only:
            new = {**copy.deepcopy(cur), "status": new.get("status")}
        else:
            for key in _IMMUTABLE_META:
                new["metadata"][key] = cur["metadata"][key]
            new.pop("status", None)
            if "status" in cur:
                new["status"] = copy.deepcopy(cur["status"])
        return self._store(ns, name, cur, new)

    def _store(self, ns: str, name: str, cur: dict[str, Any], new: dict[str, Any]) -> Any:
        if new.get("status") is None:
            new.pop("status", None)
        new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
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
            path = self.path.split("?", 1)[0]
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            server.requests.append((self.command, path, ctype))
            try:
                if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                try:
                    body = json.loads(raw) if raw else None
                except ValueError as e:
                    raise ApiError(400, "BadRequest", f"invalid JSON in the body: {e}") from e
                code, out = server.handle(self.command, path, ctype, body)
            except ApiError as e:
                code, out = e.code, e.to_status()
            data = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler


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


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# KubeRay v1.7 status builders (shapes from rayservice_types.go / raycluster_types.go;
# condition reasons and messages from rayservice_controller.go calculateConditions).
# fmt: off
INITIALIZING = ("False", "Initializing", "RayService is initializing")
READY = ("True", "NonZeroServeEndpoints", "Number of serve endpoints is greater than 0")
NO_PENDING = ("False", "NoPendingCluster", "Active Ray cluster exists and no pending Ray cluster")
BOTH_EXIST = ("True", "BothActivePendingClustersExist",
              "Both active and pending Ray clusters exist")
_DEPLOYMENT_STATUS = {"RUNNING": "HEALTHY", "DEPLOY_FAILED": "UNHEALTHY"}  # else UPDATING


def condition(type_: str, status: str, reason: str, message: str, generation: int,
              at: str = T0) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": at}


def empty_service_status() -> dict[str, Any]:
    """How KubeRay serializes an empty RayServiceStatus (Go structs are never omitted)."""
    zero = {"desiredCPU": "0", "desiredGPU": "0", "desiredMemory": "0", "desiredTPU": "0"}
    return {"rayClusterStatus": {**zero, "head": {}}}


def cluster_status(cluster: str, state: str | None = "ready", workers: int = 1) -> dict[str, Any]:
    """``rayClusterStatus`` of a RayCluster (``state=None``: still provisioning)."""
    n_ready = workers if state == "ready" else 0
    head_ready = ("True", "HeadPodRunningAndReady") if state else ("False", "HeadPodNotFound")
    out: dict[str, Any] = {
        "desiredCPU": "4", "desiredGPU": "0", "desiredMemory": "8Gi", "desiredTPU": "0",
        "desiredWorkerReplicas": workers, "minWorkerReplicas": 1, "maxWorkerReplicas": 4,
        "readyWorkerReplicas": n_ready, "availableWorkerReplicas": n_ready,
        "endpoints": {"client": "10001", "dashboard": "8265", "gcs-server": "6379",
                      "metrics": "8080", "serve": "8000"},
        "head": {"podName": f"{cluster}-head-x2kq9", "podIP": "10.0.0.12",
                 "serviceName": f"{cluster}-head-svc", "serviceIP": "10.0.0.12"},
        "observedGeneration": 1, "lastUpdateTime": T0,
        "conditions": [condition("HeadPodReady", *head_ready, "", 1)],
    }
    if state:
        out.update(state=state, stateTransitionTimes={state: T0})
    return out


def service_status(cluster: str, apps: dict[str, str] | None,
                   state: str | None = "ready") -> dict[str, Any]:
    """activeServiceStatus/pendingServiceStatus; ``apps``: app name -> Serve app status
    (``None``: KubeRay does not poll this cluster's apps). One deployment per app."""
    out: dict[str, Any] = {"rayClusterName": cluster,
                           "rayClusterStatus": cluster_status(cluster, state)}
    if apps is not None:
        out["applicationStatuses"] = {app: {
            "status": st,
            **({"message": f"Deploying app '{app}' failed."} if st == "DEPLOY_FAILED" else {}),
            "serveDeploymentStatuses": {
                f"{app.title()}Model": {"status": _DEPLOYMENT_STATUS.get(st, "UPDATING")}},
        } for app, st in apps.items()}
    return out


def rayservice_status(generation: int, *, ready: tuple[str, str, str],
                      upgrade: tuple[str, str, str], endpoints: int,
                      active: dict[str, Any] | None, pending: dict[str, Any] | None,
                      serve_status: str | None = None) -> dict[str, Any]:
    """A whole status; ``ready``/``upgrade`` are (status, reason, message)."""
    return {
        "conditions": [condition("Ready", *ready, generation),
                       condition("UpgradeInProgress", *upgrade, generation)],
        "activeServiceStatus": active or empty_service_status(),
        "pendingServiceStatus": pending or empty_service_status(),
        "numServeEndpoints": endpoints, "observedGeneration": generation, "lastUpdateTime": T0,
        # Deprecated; tests make it disagree with Ready to prove it is never read.
        "serviceStatus": serve_status or ("Running" if ready[0] == "True" else "NotRunning"),
    }


def initializing(generation: int, cluster: str, apps: dict[str, str] | None = None,
                 state: str | None = None) -> dict[str, Any]:
    """First rollout: the only cluster is still the pending one, nothing serves."""
    return rayservice_status(generation, ready=INITIALIZING, upgrade=INITIALIZING, endpoints=0,
                             active=None, pending=service_status(cluster, apps, state))


def ready(generation: int, cluster: str, apps: dict[str, str],
          endpoints: int = 2) -> dict[str, Any]:
    """Serving from ``cluster``, no pending cluster."""
    return rayservice_status(generation, ready=READY, upgrade=NO_PENDING, endpoints=endpoints,
                             active=service_status(cluster, apps), pending=None)


def upgrading(generation: int, active: str, pending: str, pending_apps: dict[str, str] | None,
              endpoints: int = 2) -> dict[str, Any]:
    """NewCluster upgrade: the old cluster serves; KubeRay stops polling its apps."""
    return rayservice_status(generation, ready=READY, upgrade=BOTH_EXIST, endpoints=endpoints,
                             active=service_status(active, None),
                             pending=service_status(pending, pending_apps))
# fmt: on
