"""The RayService resource as this client names and sends it: group, version and kind,
and a manifest checked and stripped of what the API server sets.
"""

from __future__ import annotations

import copy
from typing import Any

from serve_app.k8s.errors import InvalidManifest

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayservices"
KIND = "RayService"
API_VERSION = f"{GROUP}/{VERSION}"


# Set by the API server; sending them back on create is an error, on patch a surprise.
_SERVER_METADATA = (
    "uid",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


def prepare_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise InvalidManifest(f"a manifest must be a mapping, got {type(manifest).__name__}")
    kind, api_version = manifest.get("kind"), manifest.get("apiVersion")
    if kind != KIND or api_version != API_VERSION:
        raise InvalidManifest(
            f"expected apiVersion {API_VERSION} kind {KIND}, got apiVersion {api_version} "
            f"kind {kind}"
        )
    body = copy.deepcopy(manifest)
    body.pop("status", None)
    meta = body.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise InvalidManifest("a RayService manifest needs metadata.name")
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    return body
