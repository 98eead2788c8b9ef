"""A thin RayService client over the official ``kubernetes`` client.

KubeRay's own Python client is not on PyPI and has no RayService support, so this
module talks to ``ray.io/v1`` ``rayservices`` through ``CustomObjectsApi``. The API
object is injected (tests pass one configured for a stand-in API server); without one,
the kubeconfig or the in-cluster config is loaded on first use, never at import.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from serve_app.k8s.errors import (
    KubernetesApiError,
    KubernetesUnreachable,
    RayServiceConflict,
    RayServiceDeleteTimeout,
    RayServiceFailed,
    RayServiceNotFound,
    RayServiceTerminating,
    RayServiceWaitTimeout,
    error_from_api_exception,
)
from serve_app.k8s.kubeconfig import default_namespace, load_api_client
from serve_app.k8s.resource import GROUP, PLURAL, VERSION, prepare_manifest
from serve_app.k8s.results import ApplyResult, DeleteResult
from serve_app.k8s.status import RayServiceStatus

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi

APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "serve-app"
"""Server-side apply field manager of this client (``kubectl apply --server-side`` uses
``kubectl``): the fields it applied are the fields a later apply may remove."""

ProgressFn = Callable[[RayServiceStatus, float], None]
logger = logging.getLogger(__name__)


class RayServiceClient:
    """Apply (server-side), read, wait for and delete RayServices.

    Args:
        api: A configured ``CustomObjectsApi``. ``None``: built on first use from
            ``kubeconfig``/``context``, or the default kubeconfig, or in-cluster config.
        namespace: Namespace used when a call or a manifest names none.
        kubeconfig: Kubeconfig path, only read when ``api`` is ``None``.
        context: Kubeconfig context, only used when ``api`` is ``None``.
        request_timeout_s: Timeout of each HTTP request, so a hung server cannot hang
            ``wait_ready`` past its deadline by more than this.
    """

    def __init__(
        self,
        api: CustomObjectsApi | None = None,
        namespace: str = "default",
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        request_timeout_s: float = 30.0,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self._kubeconfig = kubeconfig
        self._context = context
        self.request_timeout_s = request_timeout_s

    @classmethod
    def from_kubeconfig(
        cls,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
    ) -> RayServiceClient:
        """A client whose namespace defaults like kubectl's.

        Args:
            kubeconfig: Kubeconfig path (default: ``$KUBECONFIG`` or ``~/.kube/config``).
            context: Context name (default: the current context).
            namespace: Explicit namespace; else the context's, else the pod's service
                account namespace, else ``default``.

        Returns:
            A client that loads its API configuration on first use.
        """
        ns = namespace or default_namespace(kubeconfig, context)
        return cls(None, ns, kubeconfig=kubeconfig, context=context)

    @property
    def api(self) -> CustomObjectsApi:
        """The ``CustomObjectsApi``, built from the kubeconfig on first access."""
        if self._api is None:
            from kubernetes.client import CustomObjectsApi

            self._api = CustomObjectsApi(load_api_client(self._kubeconfig, self._context))
        return self._api

    def _call(self, method: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
        """``CustomObjectsApi.<method>`` on rayservices in ``namespace``, errors typed."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        api = self.api
        call = getattr(api, method)
        try:
            return call(
                GROUP, VERSION, namespace, PLURAL, *args,
                _request_timeout=self.request_timeout_s, **kwargs,
            )  # fmt: skip
        except ApiException as e:
            raise error_from_api_exception(e) from e
        except HTTPError as e:
            host = api.api_client.configuration.host
            raise KubernetesUnreachable(
                f"cannot reach the Kubernetes API server at {host}: {e}"
            ) from e

    def apply(
        self,
        manifest: dict[str, Any],
        *,
        force_conflicts: bool = False,
        field_manager: str = FIELD_MANAGER,
    ) -> ApplyResult:
        """Server-side apply the RayService, as ``kubectl apply --server-side`` does.

        One ``PATCH`` with ``application/apply-patch+yaml``, ``fieldManager`` and
        ``fieldValidation=Strict``: the server creates the object when it is absent,
        rejects fields the CRD does not declare (400, naming them) instead of dropping
        them, and removes the fields this manager applied before but the manifest no
        longer has. Server-set metadata and ``status`` are never sent; a
        ``metadata.resourceVersion`` in the manifest is a precondition (409 when stale)
        on an existing object and dropped when there is none (an export re-applies).

        Args:
            manifest: A ``ray.io/v1`` ``RayService`` document.
            force_conflicts: Take over fields another manager (``kubectl edit``, a
                client-side ``kubectl apply``) set to a different value, instead of 409.
            field_manager: The manager name recorded in ``metadata.managedFields``.

        Returns:
            The action taken and the object as stored. ``unchanged`` means the
            ``generation`` (the spec) and the labels and annotations did not move.

        Raises:
            InvalidManifest: Not a ray.io/v1 RayService with a metadata.name.
            RayServiceTerminating: The object is being deleted; applying would change an
                object that is about to go.
            RayServiceConflict: Fields owned by another manager, or a stale
                resourceVersion.
            KubernetesApiError: Any other API error (400 unknown field, 422 invalid).
        """
        body = prepare_manifest(manifest)
        meta = body["metadata"]
        name = meta["name"]
        ns = meta.setdefault("namespace", self.namespace)
        try:
            before: dict[str, Any] | None = self.get(name, namespace=ns)
        except RayServiceNotFound:
            before = None
        if before is None:
            meta.pop("resourceVersion", None)  # a precondition on an object that is gone
        elif before["metadata"].get("deletionTimestamp"):
            raise RayServiceTerminating.of(before)
        try:
            response = self._call(
                "patch_namespaced_custom_object", ns, name, body,
                field_manager=field_manager, field_validation="Strict",
                force=True if force_conflicts else None,
                _content_type=APPLY_PATCH, _preload_content=False,
            )  # fmt: skip
        except RayServiceConflict as e:
            if not str(e).startswith("Apply failed with"):  # a stale resourceVersion
                raise
            raise RayServiceConflict(
                f"{e} ({conflict_advice(str(e), field_manager)})", e.status_code, e.reason
            ) from e
        applied = json.loads(response.data)
        warnings = tuple(_warnings(response.headers))
        for w in warnings:
            logger.warning("rayservice %s/%s: API server warning: %s", ns, name, w)
        if before is None:
            return ApplyResult("created", applied, True, warnings)
        spec_changed = _generation(applied) != _generation(before)
        changed = spec_changed or _labels(applied) != _labels(before)
        return ApplyResult(
            "configured" if changed else "unchanged", applied, spec_changed, warnings
        )

    def rayservice_crd(self) -> dict[str, Any]:
        """The installed ``rayservices.ray.io`` CustomResourceDefinition, as a dict.

        Reading it needs cluster-scoped ``get`` on ``customresourcedefinitions``
        (apiextensions.k8s.io), which a namespaced deployer may lack (403).

        Raises:
            KubernetesApiError: 403 without that permission, 404 (a message saying KubeRay
                is not installed) when there is no such CRD, or any other API error.
        """
        from kubernetes.client import ApiextensionsV1Api
        from kubernetes.client.exceptions import ApiException

        from serve_app.k8s.skew import CRD_NAME

        api = ApiextensionsV1Api(self.api.api_client)
        try:
            response: Any = api.read_custom_resource_definition(
                CRD_NAME, _request_timeout=self.request_timeout_s, _preload_content=False
            )
        except ApiException as e:
            error = error_from_api_exception(e)
            if error.status_code == 404:
                raise KubernetesApiError(
                    f"customresourcedefinition {CRD_NAME} not found: the KubeRay operator "
                    "and its CRDs are not installed (kuberay/README.md)",
                    404,
                    "NotFound",
                ) from e
            raise error from e
        return dict(json.loads(response.data))

    def get(self, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        """The RayService object as the API server returns it.

        Raises:
            RayServiceNotFound: No such RayService (the API's message is kept).
        """
        ns = namespace or self.namespace
        return self._call("get_namespaced_custom_object", ns, name)

    def status(self, name: str, *, namespace: str | None = None) -> RayServiceStatus:
        """The typed status of one RayService (conditions, clusters, apps, endpoints).

        Raises:
            RayServiceNotFound: No such RayService.
        """
        return RayServiceStatus.from_object(self.get(name, namespace=namespace))

    def delete(self, name: str, *, namespace: str | None = None) -> DeleteResult:
        """Delete the RayService; KubeRay's owner references remove its RayClusters.

        KubeRay puts a finalizer on the RayServices it manages, so the API server
        usually answers with the object, now carrying ``deletionTimestamp``, and removes
        it once the operator has cleaned up (:meth:`wait_deleted`).

        Returns:
            Whether it is gone already, and what the server answered.

        Raises:
            RayServiceNotFound: No such RayService.
        """
        ns = namespace or self.namespace
        answer = self._call("delete_namespaced_custom_object", ns, name)
        return DeleteResult(deleted=answer.get("kind") == "Status", object=answer)

    def wait_deleted(
        self,
        name: str,
        timeout_s: float,
        poll_interval_s: float = 1.0,
        *,
        namespace: str | None = None,
    ) -> None:
        """Poll until the RayService is gone (its finalizers removed by KubeRay).

        Raises:
            RayServiceDeleteTimeout: Still there after ``timeout_s``; names the
                finalizers that hold it.
        """
        ns = namespace or self.namespace
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                obj = self.get(name, namespace=ns)
            except RayServiceNotFound:
                return
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                finalizers = ", ".join(obj["metadata"].get("finalizers") or ()) or "none"
                raise RayServiceDeleteTimeout(
                    f"rayservice {ns}/{name} still exists after {timeout_s:g} s "
                    f"(finalizers: {finalizers}; is the KubeRay operator running?)",
                    name,
                    timeout_s,
                )
            time.sleep(min(poll_interval_s, remaining_s))

    def wait_ready(
        self,
        name: str,
        timeout_s: float,
        poll_interval_s: float = 2.0,
        on_progress: ProgressFn | None = None,
        *,
        namespace: str | None = None,
        validation_grace_s: float = 10.0,
    ) -> RayServiceStatus:
        """Poll until the RayService serves its latest spec (see ``not_ready_reason``).

        Transient API errors (5xx, 429, unreachable) are retried until the deadline; a
        404 is raised at once. KubeRay's ``ValidationFailed`` fails the wait once it has
        held for ``validation_grace_s`` with the current generation unobserved: KubeRay
        reconciles a new spec within moments, and never retries a rejected one.

        Args:
            name: RayService name.
            timeout_s: Give up after this many seconds.
            poll_interval_s: Seconds between two reads.
            on_progress: Called with ``(status, elapsed_s)`` for the first status and
                each time its one-line summary changes.
            namespace: Overrides the client's namespace.
            validation_grace_s: How long a ``ValidationFailed`` may be the previous
                generation's before it is taken as the current one's.

        Returns:
            The first ready status.

        Raises:
            RayServiceWaitTimeout: Not ready in time; carries the last status read.
            RayServiceFailed: A state waiting cannot fix (``InitializingTimeout``,
                ``ValidationFailed`` of the current spec, an application in
                ``DEPLOY_FAILED`` for the current generation).
            RayServiceNotFound: The RayService does not exist (or was deleted).
        """
        if timeout_s < 0 or poll_interval_s <= 0:
            raise ValueError("timeout_s must be >= 0 and poll_interval_s > 0")
        ns = namespace or self.namespace
        start = time.monotonic()
        last: RayServiceStatus | None = None
        last_line = ""
        last_error: KubernetesApiError | None = None
        invalid_since: float | None = None
        while True:
            try:
                status = self.status(name, namespace=ns)
            except KubernetesApiError as e:
                if not _is_transient(e):
                    raise
                if str(e) != str(last_error):
                    logger.warning("reading rayservice %s/%s: %s (retrying)", ns, name, e)
                last_error = e
            else:
                last, last_error = status, None
                line = status.summary()
                if line != last_line and on_progress is not None:
                    on_progress(status, time.monotonic() - start)
                last_line = line
                if status.is_ready:
                    return status
                why = status.terminal_failure
                invalid = status.validation_failure()
                now = time.monotonic()
                invalid_since = (invalid_since or now) if invalid else None
                if invalid and now - (invalid_since or now) >= validation_grace_s:
                    why = f"{invalid} (generation {status.generation} not accepted)"
                if why is not None:
                    raise RayServiceFailed(f"rayservice {ns}/{name} failed: {why}", name, status)
            remaining_s = start + timeout_s - time.monotonic()
            if remaining_s <= 0:
                detail = (
                    f"waiting for: {last.not_ready_reason}; last status: {last_line}"
                    if last is not None
                    else "no status read"
                )
                if last_error is not None:
                    detail += f"; last error: {last_error}"
                if last is not None and last.pending is not None and last.active is not None:
                    detail += f"; {STALLED_UPGRADE_HINT}"
                raise RayServiceWaitTimeout(
                    f"rayservice {ns}/{name} not ready after {timeout_s:g} s; {detail}",
                    name,
                    timeout_s,
                    last,
                )
            time.sleep(min(poll_interval_s, remaining_s))


STALLED_UPGRADE_HINT = (
    "KubeRay v1.7 has no timeout for a pending cluster and keeps it (and its nodes) until "
    "the spec changes; to abort, apply the spec from before the upgrade "
    "(kuberay/UPGRADES.md, 'Aborting a stalled upgrade')"
)

CLIENT_SIDE_MANAGERS = ("kubectl-client-side-apply", "before-first-apply")
"""Managers of fields written by a client-side ``kubectl apply`` (and by the API server's
migration of objects created before server-side apply)."""


def conflict_advice(message: str, field_manager: str) -> str:
    """What to do about a 409 ``Apply failed with ...``, by the managers it names."""
    managers = set(re.findall(r'conflict with "([^"]+)"', message))
    if managers & set(CLIENT_SIDE_MANAGERS):
        return (
            "the RayService was applied with a client-side `kubectl apply`; every documented "
            f"flow applies server-side as field manager {field_manager}: take the fields over "
            "once with --force-conflicts (kubectl: apply --server-side "
            f"--field-manager={field_manager} --force-conflicts), then keep applying that way"
        )
    return (
        "fields set by another manager, e.g. kubectl edit: put that change in the manifest, "
        "or apply with --force-conflicts to take them over"
    )


def _generation(obj: dict[str, Any]) -> int:
    return int(obj["metadata"].get("generation", 0))


def _labels(obj: dict[str, Any]) -> tuple[Any, Any]:
    meta = obj["metadata"]
    return meta.get("labels") or {}, meta.get("annotations") or {}


def _warnings(headers: Any) -> list[str]:
    """The text of each RFC 7234 ``Warning: 299 - "text"`` header."""
    raw = headers.getlist("Warning") if hasattr(headers, "getlist") else []
    out = []
    for value in raw:
        _, _, text = value.partition(" - ")
        out.append(text.strip().strip('"') or value)
    return out


def _is_transient(e: KubernetesApiError) -> bool:
    return isinstance(e, KubernetesUnreachable) or e.status_code == 429 or e.status_code >= 500
