"""Resolve ``version: latest`` once per deployment, when a config is deployed.

Left to each replica, ``latest`` is resolved when that replica starts: a version
published between two replica starts (or a scale-up hours later) makes replicas of one
deployment serve different versions. Pinning the number into the deployed application's
args records the decision in the replica's config; moving to a newer version is then a
redeploy (a rolling update), never a surprise.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from serve_app.errors import RepositoryError
from serve_app.repository.loader import ModelRepository

logger = logging.getLogger(__name__)


def _pin(args: dict[str, Any], root: str, folder: str) -> None:
    if args.get("version") != "latest":
        return
    try:
        args["version"] = ModelRepository(root).resolve(folder, "latest")
    except RepositoryError as e:  # the replica will fail with the same, named, error
        logger.warning("cannot pin the latest version of %s: %s", folder, e)


def pin_latest_versions(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of the Serve config ``config`` with every ``latest`` replaced by the
    highest published version (models, staged models and pipeline node targets)."""
    from serve_app.deploy.version_policy import pin_latest_n

    pinned = pin_latest_n(copy.deepcopy(config))
    for app in pinned.get("applications", []):
        args = app.get("args", {})
        kind = args.get("kind")
        if kind == "model":
            _pin(args, args["repository"]["root"], args.get("folder") or args["name"])
        elif kind == "staged":
            model = args["model"]
            _pin(model, model["repository"]["root"], model.get("folder") or model["name"])
        elif kind == "pipeline":
            for target in args["models"].values():
                _pin(target, args["repository"]["root"], target["folder"])
    return pinned
