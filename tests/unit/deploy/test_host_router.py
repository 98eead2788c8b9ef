"""``router: host``: a pipeline whose model nodes are one host and nodes fused into it is
served by replicas that load the host and run the graph in-process (no Ray)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig, load_app_config
from serve_app.deploy.app_args import APP_ARGS, PipelineAppArgs, ServerAppArgs
from serve_app.deploy.serve_config import deployment_options, render_serve_config

ROOT = Path(__file__).resolve().parents[3]


def demo_with_host_twin() -> AppConfig:
    """configs/app.yaml plus ``triage-inline``: triage with ``router: host``."""
    raw = load_app_config(ROOT / "configs/app.yaml").model_dump(mode="json", exclude_unset=True)
    raw["pipelines"].append({**raw["pipelines"][0], "name": "triage-inline", "router": "host"})
    return AppConfig.model_validate(raw)


def test_the_host_router_runs_its_model_with_the_models_own_settings() -> None:
    app = demo_with_host_twin()
    apps = {a["name"]: a for a in render_serve_config(app)["applications"]}
    (options,) = apps["triage-inline"]["deployments"]
    assert options == deployment_options(app.model("minilm"), app.http.retry_after_s) | {
        "name": "PipelineRouter"
    }
    assert options["user_config"]["max_batch_size"] == 32  # minilm's batching, reconfigurable
    args = APP_ARGS.validate_python(apps["triage-inline"]["args"])
    assert isinstance(args, PipelineAppArgs) and args.host is not None
    assert args.host.name == "minilm"
    # the host loads the fused nodes of this pipeline only; minilm's own app those of triage
    assert {(f.pipeline, f.node) for f in args.host.fused} == {
        ("triage-inline", "topic"),
        ("triage-inline", "urgency"),
        ("triage-inline", "second-opinion"),
    }
    own = APP_ARGS.validate_python(apps["minilm"]["args"])
    assert {f.pipeline for f in own.fused} == {"triage"}  # type: ignore[union-attr]
    assert all(t.app is None for t in args.models.values())  # nothing called through handles
    assert ServerAppArgs.from_config(app).pipelines["triage-inline"] == []
    # the router's graph is the graph: how it is placed lives in its deployment options
    assert "router" not in apps["triage-inline"]["args"]["pipeline"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["nodes"][1].update(placement="separate"),
            "router: host needs exactly one separate model node (the host) with every other "
            "model node fused into it; separate: ['embed', 'topic']",
        ),
        (
            lambda p: p.update(num_replicas=2),
            "with router: host the replicas are sized by the host model's settings; "
            "remove ['num_replicas']",
        ),
    ],
)
def test_a_host_router_that_cannot_be_one_is_refused(change: Any, message: str) -> None:
    raw = load_app_config(ROOT / "configs/app.yaml").model_dump(mode="json", exclude_unset=True)
    triage = raw["pipelines"][0] | {"router": "host"}
    change(triage)
    raw["pipelines"] = [triage]
    if triage["nodes"][1].get("placement") == "separate":
        for model in raw["models"]:
            model.pop("standalone", None)
    with pytest.raises(ValidationError, match=re.escape(message)):
        AppConfig.model_validate(raw)


def test_a_model_only_a_host_router_runs_needs_no_deployment_of_its_own() -> None:
    raw = load_app_config(ROOT / "configs/app.yaml").model_dump(mode="json", exclude_unset=True)
    raw["models"].append({"name": "minilm-inline", "repository_name": "minilm",
                          "standalone": False})  # fmt: skip
    inline = raw["pipelines"][0] | {"name": "triage-inline", "router": "host"}
    inline["nodes"] = [dict(n) for n in inline["nodes"]]
    inline["nodes"][0]["model"] = "minilm-inline"
    raw["pipelines"].append(inline)
    app = AppConfig.model_validate(raw)
    names = [a["name"] for a in render_serve_config(app)["applications"]]
    assert "minilm-inline" not in names and "triage-inline" in names
    raw["pipelines"][0]["nodes"][0]["model"] = "minilm-inline"  # called through a handle
    with pytest.raises(ValidationError, match=re.escape("nodes ['triage/embed'] call it")):
        AppConfig.model_validate(raw)


def test_handle_loop_reaches_the_router() -> None:
    raw = load_app_config(ROOT / "configs/app.yaml").model_dump(mode="json", exclude_unset=True)
    raw["pipelines"][0]["handle_loop"] = "same"
    app = AppConfig.model_validate(raw)
    (triage,) = [a for a in render_serve_config(app)["applications"] if a["name"] == "triage"]
    assert PipelineAppArgs.model_validate(triage["args"]).handle_loop == "same"
