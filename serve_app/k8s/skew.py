"""Version skew between the manifests and the KubeRay operator installed in a cluster.

An API server prunes the fields a CRD does not declare (or, under strict field
validation, rejects them), so a RayService written for KubeRay v1.7 applied against an
older operator's CRD loses ``authOptions`` silently with ``--validate=false``: the
cluster then runs without Ray token authentication. ``serve-app k8s apply`` therefore
reads the installed ``rayservices.ray.io`` CRD first and refuses, naming each field the
CRD lacks and the KubeRay release that introduced it.

The CRD carries no operator version (Helm installs it from the chart's ``crds/`` folder
as is), so the schema itself is what is compared.
"""

from __future__ import annotations

from typing import Any

from serve_app.k8s.errors import KubeRayTooOld

CRD_NAME = "rayservices.ray.io"
TESTED_KUBERAY = "v1.7.0"
"""The KubeRay release whose CRDs the manifests are validated against (kuberay-crds)."""

FIELD_SINCE: dict[str, str] = {
    "spec.excludeHeadPodFromServeSvc": "v1.3.0",
    "spec.upgradeStrategy": "v1.3.0",
    "spec.rayClusterConfig.gcsFaultToleranceOptions": "v1.3.0",
    "spec.rayClusterConfig.autoscalerOptions.version": "v1.4.0",
    "spec.rayClusterDeletionDelaySeconds": "v1.5.0",
    "spec.upgradeStrategy.clusterUpgradeOptions": "v1.5.0",
    "spec.rayClusterConfig.authOptions": "v1.5.1",
}
"""First KubeRay release whose RayService CRD declares each field the manifests (base,
overlays, components) use beyond v1.0.0's CRD; read from the CRD of every v1.x tag of
ray-project/kuberay (ray-operator/config/crd/bases/ray.io_rayservices.yaml)."""


def crd_schema(crd: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one version of a CRD object.

    Raises:
        KubeRayTooOld: The CRD serves no such version.
    """
    for v in (crd.get("spec") or {}).get("versions") or []:
        if v.get("name") == version:
            return dict((v.get("schema") or {}).get("openAPIV3Schema") or {})
    served = ", ".join(str(v.get("name")) for v in crd["spec"].get("versions") or [])
    raise KubeRayTooOld(
        f"the installed {CRD_NAME} CRD serves no ray.io/{version} (only: {served or 'none'}): "
        f"the KubeRay operator predates v1.0.0; install KubeRay {TESTED_KUBERAY}"
    )


def undeclared_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Dotted paths of the fields of ``obj`` that ``schema`` does not declare.

    Follows ``properties``, ``additionalProperties`` and ``items``; stops where the schema
    keeps unknown fields (``x-kubernetes-preserve-unknown-fields`` without properties),
    as the API server's pruning does. List indexes are written ``[]``.
    """
    out: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        if props is None:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for value in obj.values():
                    out += undeclared_fields(value, extra, f"{path}.*")
            return out
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if key not in props:
                out.append(where)
            else:
                out += undeclared_fields(value, props[key], where)
    elif isinstance(obj, list):
        for value in obj:
            out += undeclared_fields(value, schema.get("items") or {}, f"{path}[]")
    return sorted(set(out))


def check_rayservice_crd(crd: dict[str, Any], manifests: list[dict[str, Any]]) -> None:
    """Refuse manifests that use fields the installed RayService CRD does not declare.

    Args:
        crd: The ``rayservices.ray.io`` CustomResourceDefinition as the API server returns it.
        manifests: The RayService documents about to be applied.

    Raises:
        KubeRayTooOld: Naming each missing field, the release that introduced it and
            the release to install.
    """
    schema = crd_schema(crd)
    missing = sorted(
        {f for m in manifests for f in undeclared_fields({"spec": m.get("spec")}, schema)}
    )
    if not missing:
        return
    named = [
        f"{f} (KubeRay >= {FIELD_SINCE[f]})"
        if f in FIELD_SINCE
        else f"{f} (not in KubeRay {TESTED_KUBERAY} either: a typo?)"
        for f in missing
    ]
    needed = max(
        (FIELD_SINCE[f] for f in missing if f in FIELD_SINCE), key=_version_key, default=None
    )
    advice = (
        f"the KubeRay operator is older than these manifests need (KubeRay >= {needed}; "
        f"tested with {TESTED_KUBERAY}): upgrade the CRDs and the operator (kuberay/README.md, "
        "'Version skew'), or a strict apply fails and a non-strict one drops the fields"
        if needed
        else "fix the manifest"
    )
    raise KubeRayTooOld(
        f"the installed {CRD_NAME} CRD does not declare {', '.join(named)}: {advice}"
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.lstrip("v").split("."))
