"""Versions of one model side by side (``ModelConfig.version_policy``), as Triton's
version policy serves them, with Serve's own routing and no extra hop:

- each served version is its own Serve application: the newest keeps the model's
  application and route (``/v2/models/<name>``, which also answers
  ``/versions/<newest>``); each older one is ``<name>.v<k>`` (``specific``) or
  ``<name>.latest-<i>`` (``latest_n``) at ``/v2/models/<name>/versions/<k>``, a longer
  prefix, so Serve's and HAProxy's longest-prefix match send it there directly;
- a version no application serves reaches the newest one, which answers 404 listing the
  served versions;
- ``latest_n`` is resolved when the config is deployed (``pin``): the slots get their
  version numbers and routes then, and slots with no published version are dropped.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from serve_app.config import ModelConfig
from serve_app.errors import RepositoryError
from serve_app.repository.loader import ModelRepository

logger = logging.getLogger(__name__)

LATEST_SLOT = "latest-"
"""Route segment of an unresolved ``latest_n`` slot (replaced when pinned)."""
CANARY_SUFFIX = ".canary"
"""A model's canary application is ``<name>.canary``."""


def side_app_names(model: ModelConfig) -> list[str]:
    """Applications of the model's older served versions, newest first."""
    if model.canary is not None:
        return [f"{model.app_name}{CANARY_SUFFIX}"]
    policy = model.version_policy
    if policy is None:
        return []
    if policy.specific is not None:
        return [f"{model.app_name}.v{v}" for v in reversed(policy.specific[:-1])]
    assert policy.latest_n is not None
    return [f"{model.app_name}.{LATEST_SLOT}{i}" for i in range(1, policy.latest_n)]


def version_applications(model: ModelConfig, primary: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's application ``primary`` expanded by its version policy: the newest
    version in ``primary``, then one application per older version."""
    if model.canary is not None:
        return canary_applications(model, primary)
    policy = model.version_policy
    if policy is None:
        return [primary]
    apps = [copy.deepcopy(primary)]
    names = side_app_names(model)
    if policy.specific is not None:
        served = policy.specific
        apps[0]["args"].update(version=served[-1], served_versions=served)
        for name, version in zip(names, reversed(served[:-1]), strict=True):
            side = copy.deepcopy(apps[0])
            side.update(name=name, route_prefix=f"{model.route_prefix}/versions/{version}")
            side["args"]["version"] = version
            side["args"]["jobs"] = None  # jobs are answered by the target's main route
            apps.append(side)
        return apps
    apps[0]["args"].update(latest_n=policy.latest_n, slot=0)
    for slot, name in enumerate(names, start=1):
        side = copy.deepcopy(apps[0])
        side.update(name=name, route_prefix=f"{model.route_prefix}/versions/{LATEST_SLOT}{slot}")
        side["args"]["slot"] = slot
        side["args"]["jobs"] = None
        apps.append(side)
    return apps


def canary_applications(model: ModelConfig, primary: dict[str, Any]) -> list[dict[str, Any]]:
    """The stable version on the model's route, forwarding ``canary.percent`` of its
    unversioned requests to the canary's own application."""
    assert model.canary is not None and isinstance(model.version, int)
    canary_app = f"{model.app_name}{CANARY_SUFFIX}"
    served = sorted([model.version, model.canary.version])
    stable = copy.deepcopy(primary)
    # In user_config, not args: Serve applies it to running replicas, so starting,
    # resizing or removing the canary does not restart the stable version.
    (deployment,) = stable["deployments"]
    deployment["user_config"] = {
        **deployment["user_config"],
        "canary": {
            "app": canary_app,
            "version": model.canary.version,
            "percent": model.canary.percent,
        },
        "served_versions": served,
    }
    canary = copy.deepcopy(primary)
    canary.update(
        name=canary_app, route_prefix=f"{model.route_prefix}/versions/{model.canary.version}"
    )
    canary["args"].update(version=model.canary.version, served_versions=served, jobs=None)
    return [stable, canary]


def pin_latest_n(config: dict[str, Any]) -> dict[str, Any]:
    """Resolve every ``latest_n`` slot of a Serve config in place: the slot's version,
    its route and every slot's ``served_versions``; drops slots with no published
    version (and their names from the server's ``user_config.side_versions``). Returns
    it."""
    dropped: set[str] = set()
    kept = []
    for app in config.get("applications", []):
        args = app.get("args", {})
        if args.get("kind") != "model" or args.get("latest_n") is None:
            kept.append(app)
            continue
        folder = args.get("folder") or args["name"]
        try:
            published = ModelRepository(args["repository"]["root"]).versions(folder)
        except RepositoryError as e:  # the replica reports the same, named, error
            logger.warning("cannot resolve the versions of %s: %s", folder, e)
            kept.append(app)
            continue
        served = published[-args["latest_n"] :]
        slot = args["slot"]
        if slot >= len(served):
            dropped.add(app["name"])
            continue
        version = served[-1 - slot]
        args.update(version=version, served_versions=served)
        if slot > 0:
            base = app["route_prefix"].rsplit("/versions/", 1)[0]
            app["route_prefix"] = f"{base}/versions/{version}"
        kept.append(app)
    config["applications"] = kept
    for app in kept:
        if app.get("args", {}).get("kind") != "server":
            continue
        for deployment in app.get("deployments", []):
            sides = (deployment.get("user_config") or {}).get("side_versions", {})
            for model, names in sides.items():
                sides[model] = [n for n in names if n not in dropped]
    return config
