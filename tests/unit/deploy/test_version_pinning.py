"""``latest`` is pinned once per deployment at deploy time (no Ray)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from serve_app.config import AppConfig
from serve_app.deploy.serve_config import render_serve_config
from serve_app.deploy.versions import pin_latest_versions
from serve_app.repository import publish
from serve_app.repository.manifest import Architecture

ARCH = Architecture(name="mlp", kwargs={"in_features": 4, "hidden": [], "out_features": 4})


def test_latest_becomes_the_highest_published_version(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    save_file({"net.0.weight": torch.zeros(4, 4), "net.0.bias": torch.zeros(4)}, str(weights))
    root = tmp_path / "repo"
    for _ in range(3):
        publish(weights, root, "head", architecture=ARCH)
    app = AppConfig.model_validate(
        {
            "repository": {"root": str(root)},
            "models": [
                {"name": "head"},
                {"name": "pinned", "repository_name": "head", "version": 1},
                {"name": "missing"},
            ],
            "pipelines": [
                {
                    "name": "p",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                    "nodes": [{"name": "a", "model": "head", "inputs": {"input": "request.x"}}],
                    "outputs": {"y": "a.output"},
                }
            ],
        }
    )
    config = render_serve_config(app)
    pinned = pin_latest_versions(config)
    args = {a["name"]: a["args"] for a in pinned["applications"]}
    assert args["head"]["version"] == 3
    assert args["pinned"]["version"] == 1
    assert args["missing"]["version"] == "latest"  # its replica reports the missing folder
    assert args["p"]["models"]["head"]["version"] == 3
    # the rendered (committed) config keeps the policy; only the deployed copy is pinned
    assert {a["name"]: a["args"] for a in config["applications"]}["head"]["version"] == "latest"
