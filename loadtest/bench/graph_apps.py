"""What the graph benchmark serves: a chain of tiny models published into a repository,
its AppConfig, and the demo's AppConfig.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from loadtest.harness.demo_process import REPO_ROOT
from loadtest.reports.graph import CHAIN
from loadtest.traffic.wrk import PORT

DIM = 384


def publish_chain(root: Path) -> None:
    """Publish the three seeded chain MLPs (seed = position in the chain) into ``root``."""
    import torch
    from safetensors.torch import save_file

    from serve_app.models.architectures import MLP
    from serve_app.repository.manifest import Architecture
    from serve_app.repository.publish import publish

    kwargs: dict[str, Any] = {"in_features": DIM, "hidden": [DIM], "out_features": DIM}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, name in enumerate(CHAIN):
            torch.manual_seed(seed)
            weights = Path(tmp) / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in MLP(**kwargs).state_dict().items()}, weights)
            publish(
                weights,
                root,
                name,
                architecture=Architecture(name="mlp", kwargs=kwargs),
                source=f"seeded random init (torch.manual_seed({seed}))",
            )


def chain_app_config(root: Path, wait_s: float) -> dict[str, Any]:
    """AppConfig (as a dict) of the chain models and the ``chain3``, ``chain3-fused`` (b
    and c fused into a's replicas), ``chain3-inline`` (the same with ``router: host``) and
    ``chain1`` pipelines."""
    return with_host_router(_chain_apps(root, wait_s), "chain3-fused", "chain3-inline")


def _chain_apps(root: Path, wait_s: float) -> dict[str, Any]:
    model = {
        "batching": {"max_batch_size": 32, "batch_wait_timeout_s": wait_s},
        "max_ongoing_requests": 64,
        "resources": {"num_cpus": 0, "torch_threads": 1},
    }
    inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, DIM]}]
    nodes = [
        {"name": "a", "kind": "model", "model": CHAIN[0], "inputs": {"input": "request.input"}},
        {"name": "b", "kind": "model", "model": CHAIN[1], "inputs": {"input": "a.output"}},
        {"name": "c", "kind": "model", "model": CHAIN[2], "inputs": {"input": "b.output"}},
    ]
    return {
        "repository": {"root": str(root)},
        "http": {"host": "127.0.0.1", "port": PORT, "ingress": "haproxy"},
        "models": [{"name": n, **model} for n in CHAIN],
        "pipelines": [
            {"name": "chain3", "inputs": inputs, "nodes": nodes, "outputs": {"output": "c.output"}},
            {
                "name": "chain3-fused",
                "inputs": inputs,
                "nodes": [nodes[0]] + [{**n, "placement": "fused"} for n in nodes[1:]],
                "outputs": {"output": "c.output"},
            },
            {
                "name": "chain1",
                "inputs": inputs,
                "nodes": nodes[:1],
                "outputs": {"output": "a.output"},
            },
        ],
    }


def demo_app_config(root: Path) -> dict[str, Any]:
    """``configs/app.yaml`` with the repository root replaced by ``root``."""
    data = yaml.safe_load((REPO_ROOT / "configs" / "app.yaml").read_text())
    data["repository"]["root"] = str(root)
    return data


def separate_heads(
    app: dict[str, Any], pipeline: str = "triage", name: str | None = None
) -> dict[str, Any]:
    """``app`` with ``pipeline``'s model nodes on their own deployments (``placement:
    separate``), renamed ``name`` when given (a twin next to the original); models that
    ran only fused are then served standalone, as the demo served them before fusing:
    tiny, on no CPU of their own."""
    graph = next(p for p in app["pipelines"] if p["name"] == pipeline)
    nodes = [dict(n) for n in graph["nodes"]]
    for node in nodes:
        if node.get("kind", "model") == "model":
            node["placement"] = "separate"
    separate = {**graph, "nodes": nodes}
    if name is None:
        app["pipelines"] = [separate if p is graph else p for p in app["pipelines"]]
    else:
        app["pipelines"].append({**separate, "name": name})
    for model in app["models"]:
        if model.pop("standalone", True) is False:
            model["resources"] = {"num_cpus": 0, "torch_threads": 1}
            model["batching"] = {"max_batch_size": 64, "batch_wait_timeout_s": 0.002}
    return app


def with_host_router(app: dict[str, Any], pipeline: str, name: str) -> dict[str, Any]:
    """``app`` plus ``name``: ``pipeline`` with ``router: host``, its host model a copy of
    the original (same weights, batching and replicas; no CPU reserved, so it fits next
    to the original on the same cores, and no route of its own)."""
    graph = next(p for p in app["pipelines"] if p["name"] == pipeline)
    nodes = [dict(n) for n in graph["nodes"]]
    (host,) = [
        n for n in nodes if n.get("kind", "model") == "model" and n.get("placement") != "fused"
    ]
    model = next(m for m in app["models"] if m["name"] == host["model"])
    copy = {**model, "name": f"{model['name']}-{name}", "standalone": False,
            "repository_name": model.get("repository_name", model["name"]),
            "resources": {**model.get("resources", {}), "num_cpus": 0}}  # fmt: skip
    app["models"].append(copy)
    host["model"] = copy["name"]
    app["pipelines"].append({**graph, "name": name, "nodes": nodes, "router": "host"})
    return app
