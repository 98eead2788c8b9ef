"""``serve-app k8s``: apply, status, wait and delete RayServices.

``apply`` applies only the ``ray.io/v1`` RayService documents of a file and names every
other document it skips: Deployments, ConfigMaps, PVCs and the like belong to
``kubectl apply -k``, which knows every kind and the cluster's RBAC. Importing this
module is cheap: the ``kubernetes`` package is imported when a command runs.

Errors are :class:`serve_app.errors.ServeAppError` subclasses and are left to the
``serve-app`` entry point, which prints ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serve_app.k8s.client import RayServiceClient
    from serve_app.k8s.status import ClusterServiceStatus, RayServiceStatus


def _client(a: argparse.Namespace) -> RayServiceClient:
    from serve_app.k8s.client import RayServiceClient

    return RayServiceClient.from_kubeconfig(a.kubeconfig, a.context, a.namespace)


def _load_documents(path: str) -> list[Any]:
    import yaml

    from serve_app.k8s.errors import InvalidManifest

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidManifest(f"cannot read {path}: {e.strerror}") from e
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise InvalidManifest(f"{path} is not valid YAML: {e}") from e


def _check_operator(a: argparse.Namespace, client: RayServiceClient, docs: list[Any]) -> None:
    """Refuse manifests the installed KubeRay CRD cannot hold (serve_app.k8s.skew)."""
    from serve_app.k8s.errors import KubernetesApiError
    from serve_app.k8s.skew import check_rayservice_crd

    if a.skip_crd_check:
        return
    try:
        crd = client.rayservice_crd()
    except KubernetesApiError as e:
        if e.status_code != 403:
            raise
        print(
            f"warning: KubeRay version check skipped: cannot read the RayService CRD ({e}); "
            "grant get on customresourcedefinitions, or pass --skip-crd-check",
            file=sys.stderr,
        )
        return
    check_rayservice_crd(crd, docs)


def _apply(a: argparse.Namespace) -> int:
    from serve_app.k8s.errors import InvalidManifest
    from serve_app.k8s.resource import API_VERSION, KIND

    docs = _load_documents(a.filename)
    rayservices, skipped = [], []
    for doc in docs:
        if not isinstance(doc, dict):
            raise InvalidManifest(f"{a.filename}: a document is not a mapping: {doc!r:.80}")
        if doc.get("kind") == KIND:
            # Check every RayService before applying any, so a bad one applies nothing.
            if doc.get("apiVersion") != API_VERSION or not (doc.get("metadata") or {}).get("name"):
                raise InvalidManifest(
                    f"{a.filename}: a {KIND} needs apiVersion {API_VERSION} "
                    f"and metadata.name, got apiVersion "
                    f"{doc.get('apiVersion')}"
                )
            rayservices.append(doc)
        else:
            name = (doc.get("metadata") or {}).get("name", "?")
            skipped.append(f"{doc.get('kind', '?')}/{name}")
    if not rayservices:
        found = ", ".join(skipped) or "no documents"
        raise InvalidManifest(f"{a.filename}: no {API_VERSION} {KIND} document ({found})")
    client = _client(a)
    _check_operator(a, client, rayservices)
    for doc in rayservices:
        r = client.apply(doc, force_conflicts=a.force_conflicts)
        for warning in r.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        what = "" if r.spec_changed or r.action == "unchanged" else ", metadata only"
        print(
            f"rayservice.ray.io/{r.name} {r.action} "
            f"(namespace {r.namespace}, generation {r.generation}{what})"
        )
    for s in skipped:
        print(f"skipped {s}: `serve-app k8s apply` applies RayServices only; use kubectl apply")
    return 0


def _cluster_lines(label: str, svc: ClusterServiceStatus | None) -> list[str]:
    if svc is None:
        return [f"{label} cluster: none"]
    lines = [
        f"{label} cluster: {svc.ray_cluster_name} (state {svc.ray_cluster_state or '-'}, "
        f"{svc.ready_worker_replicas} ready workers)"
    ]
    if not svc.applications:
        lines.append("  applications: not reported")
    for app_name, app in sorted(svc.applications.items()):
        lines.append(
            f"  app {app_name}: {app.status}" + (f" - {app.message}" if app.message else "")
        )
        for dep_name, dep in sorted(app.deployments.items()):
            lines.append(
                f"    deployment {dep_name}: {dep.status}"
                + (f" - {dep.message}" if dep.message else "")
            )
    return lines


def format_status(st: RayServiceStatus) -> str:
    """Multi-line human-readable status, as ``serve-app k8s status`` prints it.

    Args:
        st: The parsed status.

    Returns:
        The text, without a trailing newline.
    """
    lines = [
        f"rayservice {st.namespace}/{st.name}: generation {st.generation}, "
        f"observed {st.observed_generation}, ready: "
        + ("yes" if st.is_ready else f"no ({st.not_ready_reason})")
    ]
    for c in (st.ready, st.upgrade, st.condition("RollbackInProgress")):
        if c is not None:
            lines.append(
                f"{c.type}: {c.status} ({c.reason})" + (f" {c.message}" if c.message else "")
            )
    lines.append(f"serve endpoints: {st.num_serve_endpoints}")
    lines += _cluster_lines("active", st.active)
    lines += _cluster_lines("pending", st.pending)
    return "\n".join(lines)


def _status(a: argparse.Namespace) -> int:
    st = _client(a).status(a.name)
    print(st.model_dump_json(indent=2) if a.output == "json" else format_status(st))
    return 0


def _wait(a: argparse.Namespace) -> int:
    client = _client(a)

    def progress(st: RayServiceStatus, elapsed_s: float) -> None:
        print(f"[{elapsed_s:7.1f} s] {st.summary()}", flush=True)

    st = client.wait_ready(a.name, a.timeout_s, a.poll_interval_s, progress)
    active = st.active.ray_cluster_name if st.active else "-"
    print(
        f"rayservice {st.namespace}/{st.name} ready: {st.num_serve_endpoints} serve "
        f"endpoints, active cluster {active}, generation {st.generation}"
    )
    return 0


def _upgrade(a: argparse.Namespace) -> int:
    from serve_app.k8s.errors import InvalidManifest
    from serve_app.k8s.resource import KIND
    from serve_app.k8s.upgrade import parse_holds, safe_cluster_upgrade

    docs = [d for d in _load_documents(a.filename) if isinstance(d, dict) and d.get("kind") == KIND]
    if len(docs) != 1:
        raise InvalidManifest(f"{a.filename}: expected one {KIND}, found {len(docs)}")
    client = _client(a)
    (doc,) = docs
    doc.setdefault("metadata", {}).setdefault("namespace", client.namespace)
    _check_operator(a, client, docs)

    def step(name: str, generation: int) -> None:
        what = {
            "raise": "raising min_replicas on the running cluster",
            "upgrade": "applying the new spec, min_replicas held",
            "release": "releasing min_replicas",
        }[name]
        print(f"{name}: {what} (generation {generation}); waiting", flush=True)

    def save_previous(previous: dict[str, Any]) -> str:
        import yaml

        path = Path(a.previous_file or f"rayservice-{previous['metadata']['name']}.previous.yaml")
        path.write_text(yaml.safe_dump(previous, sort_keys=False), encoding="utf-8")
        print(f"the running spec is saved to {path} (apply it to abort)", flush=True)
        return str(path)

    st = safe_cluster_upgrade(
        client, doc, parse_holds(a.hold), a.timeout_s, poll_interval_s=a.poll_interval_s,
        on_step=step, force_conflicts=a.force_conflicts, save_previous=save_previous,
    )  # fmt: skip
    active = st.active.ray_cluster_name if st.active else "-"
    print(f"rayservice {st.namespace}/{st.name} upgraded: active cluster {active}")
    return 0


def _delete(a: argparse.Namespace) -> int:
    from serve_app.k8s.errors import RayServiceNotFound

    client = _client(a)
    try:
        result = client.delete(a.name)
    except RayServiceNotFound as e:
        if not a.ignore_not_found:
            raise
        print(f"{e} (ignored)")
        return 0
    where = f"rayservice.ray.io/{a.name}"
    if not result.deleted:
        finalizers = ", ".join(result.finalizers)
        print(f"{where} deleting (namespace {client.namespace}, finalizers: {finalizers})")
        if not a.wait:
            return 0
        client.wait_deleted(a.name, a.timeout_s)
    print(f"{where} deleted (namespace {client.namespace})")
    return 0


_SKIP_CRD_HELP = (
    "do not read the installed RayService CRD to refuse a KubeRay operator older than the "
    "manifests need (kuberay/README.md, 'Version skew')"
)
_FORCE_HELP = (
    "take over fields another field manager set differently (a client-side kubectl apply, "
    "kubectl edit); without it such a field is a 409 naming the manager"
)


def add_k8s_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``k8s`` with ``apply``, ``status``, ``wait``, ``upgrade``, ``delete`` to a CLI.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``k8s`` parser. Each leaf sets ``func(args) -> int``.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-n", "--namespace", default=None, help="namespace (default: the context's, else 'default')"
    )
    common.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster config)",
    )
    common.add_argument("--context", default=None, help="kubeconfig context (default: current)")

    k8s = subparsers.add_parser(
        "k8s", help="RayService on Kubernetes: apply, status, wait, upgrade, delete"
    )
    ksub = k8s.add_subparsers(dest="k8s_command", required=True)

    ap = ksub.add_parser(
        "apply", parents=[common], help="server-side apply the RayServices of a YAML file"
    )
    ap.add_argument("-f", "--filename", required=True, help="YAML file ('-': stdin)")
    ap.add_argument("--force-conflicts", action="store_true", help=_FORCE_HELP)
    ap.add_argument("--skip-crd-check", action="store_true", help=_SKIP_CRD_HELP)
    ap.set_defaults(func=_apply)

    st = ksub.add_parser("status", parents=[common], help="conditions, clusters and apps")
    st.add_argument("name", help="RayService name")
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")
    st.set_defaults(func=_status)

    wt = ksub.add_parser(
        "wait", parents=[common], help="wait until the RayService serves its latest spec"
    )
    wt.add_argument("name", help="RayService name")
    wt.add_argument("--timeout-s", type=float, default=600.0, help="give up after (seconds)")
    wt.add_argument("--poll-interval-s", type=float, default=2.0, help="seconds between reads")
    wt.set_defaults(func=_wait)

    up = ksub.add_parser(
        "upgrade",
        parents=[common],
        help="apply a cluster-changing spec without dropping capacity (raise min_replicas, "
        "upgrade, release; kuberay/UPGRADES.md)",
    )
    up.add_argument("-f", "--filename", required=True, help="YAML with one RayService")
    up.add_argument(
        "--hold",
        action="append",
        required=True,
        metavar="APP=REPLICAS",
        help="keep at least REPLICAS of application APP through the upgrade (repeatable)",
    )
    up.add_argument("--force-conflicts", action="store_true", help=_FORCE_HELP)
    up.add_argument("--skip-crd-check", action="store_true", help=_SKIP_CRD_HELP)
    up.add_argument(
        "--timeout-s",
        type=float,
        default=1800.0,
        help="budget of each step; a new cluster not serving by then is a stalled upgrade "
        "(exit 2, naming how to abort)",
    )
    up.add_argument(
        "--previous-file",
        default=None,
        help="where to save the running spec first (default: "
        "./rayservice-<name>.previous.yaml); applying it aborts a stalled upgrade",
    )
    up.add_argument("--poll-interval-s", type=float, default=5.0, help="seconds between reads")
    up.set_defaults(func=_upgrade)

    de = ksub.add_parser("delete", parents=[common], help="delete a RayService")
    de.add_argument("name", help="RayService name")
    de.add_argument("--ignore-not-found", action="store_true", help="exit 0 when absent")
    de.add_argument("--wait", action="store_true", help="wait until KubeRay's finalizer lets it go")
    de.add_argument("--timeout-s", type=float, default=300.0, help="--wait gives up after")
    de.set_defaults(func=_delete)
    return k8s
