"""Render each kustomize overlay offline and validate what `kubectl apply -k` would send.

RayService objects validate against the KubeRay v1.7.0 CRD schema (plus a strict check for
fields the API server would drop), core objects against the ``kubernetes`` client's models
(unknown fields are errors there), and ``serveConfigV2`` against Ray's
``ServeDeploySchema`` and serve_app's builder args.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.config import load_app_config
from serve_app.deploy.app_args import APP_ARGS, ModelAppArgs
from serve_app.k8s.profiles import PROFILES, ClusterProfile
from serve_app.k8s.render import PROXY_LOCATION, serve_config_text
from tests.k8s import crd_schema as crds
from tests.k8s.conftest import kustomize

REPO_ROOT = Path(__file__).resolve().parents[2]
# ids "<name>-overlay": tests/conftest.py skips items with a bare "gpu" keyword (no CUDA),
# and these render tests need no GPU.
OVERLAYS = [pytest.param(p.name, id=f"{p.name}-overlay") for p in PROFILES]
CORE_MODELS = {
    "ConfigMap": "V1ConfigMap",
    "PersistentVolume": "V1PersistentVolume",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "Job": "V1Job",
    "NetworkPolicy": "V1NetworkPolicy",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
    "Service": "V1Service",  # the opt-in components'
    "StatefulSet": "V1StatefulSet",
}


@functools.cache
def _render_text(overlay: str) -> str:
    return yaml.safe_dump_all(kustomize(REPO_ROOT / "kuberay" / "overlays" / overlay))


def render(overlay: str) -> list[dict[str, Any]]:
    """The documents of ``kubectl kustomize kuberay/overlays/<overlay>`` (fresh copies)."""
    return [d for d in yaml.safe_load_all(_render_text(overlay)) if d]


def profile(overlay: str) -> ClusterProfile:
    return next(p for p in PROFILES if p.name == overlay)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def crd_errors(obj: dict[str, Any]) -> list[str]:
    crds.skip_without_crds()
    return crds.crd_errors(obj)


def core_errors(obj: dict[str, Any]) -> list[str]:
    """Validation errors of a core object against the kubernetes client model (strict)."""
    import kubernetes.client
    from pydantic import ValidationError

    model = getattr(kubernetes.client, CORE_MODELS[obj["kind"]])
    try:
        model.model_validate(obj)
    except ValidationError as e:
        return [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
    return []


def ray_pod_templates(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        templates[group["groupName"]] = group["template"]
    return templates


@pytest.mark.parametrize(
    ("overlay", "kinds"),
    [
        pytest.param(
            "dev",
            [
                "ConfigMap",
                "ConfigMap",
                "Job",
                "NetworkPolicy",
                "PersistentVolume",
                "PersistentVolume",
                "PersistentVolumeClaim",
                "PersistentVolumeClaim",
                "PodDisruptionBudget",
                "RayService",
            ],
            id="dev-overlay",
        ),
        pytest.param(
            "gpu",
            [
                "ConfigMap",
                "ConfigMap",
                "Job",
                "NetworkPolicy",
                "PersistentVolumeClaim",
                "PersistentVolumeClaim",
                "PodDisruptionBudget",
                "RayService",
            ],
            id="gpu-overlay",
        ),
    ],
)
def test_overlay_renders_expected_objects(overlay: str, kinds: list[str]) -> None:
    assert sorted(d["kind"] for d in render(overlay)) == kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_opens_with_a_purpose_comment(overlay: str) -> None:
    text = (REPO_ROOT / "kuberay" / "overlays" / overlay / "kustomization.yaml").read_text()
    assert text.startswith(f"# {overlay}: "), text.splitlines()[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayservice_matches_kuberay_crd(overlay: str) -> None:
    rs = one(render(overlay), "RayService")
    assert rs["apiVersion"] == "ray.io/v1"
    assert crd_errors(rs) == []


def test_crd_check_reports_typos_and_wrong_types() -> None:
    rs = one(render("dev"), "RayService")
    rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = "yes"
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert crd_errors(rs) == [
        'spec.rayClusterConfig.enableInTreeAutoscaling: Invalid value: "string": '
        "spec.rayClusterConfig.enableInTreeAutoscaling in body must be of type boolean: "
        '"string"',
        "unknown field .spec.rayClusterConfig.workerGroupSpecs[0].maxReplica",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_match_kubernetes_models(overlay: str) -> None:
    docs = render(overlay)
    core = [d for d in docs if d["kind"] in CORE_MODELS]
    assert len(core) == len(docs) - 1  # all but the RayService
    assert {d["metadata"]["name"]: core_errors(d) for d in core} == {
        d["metadata"]["name"]: [] for d in core
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pod_templates_match_kubernetes_models(overlay: str) -> None:
    import kubernetes.client

    for template in ray_pod_templates(one(render(overlay), "RayService")).values():
        kubernetes.client.V1PodTemplateSpec.model_validate(template)


def test_core_check_reports_unknown_fields() -> None:
    job = one(render("dev"), "Job")
    job["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert core_errors(job) == [
        "spec.template.spec.containers.0.volumeMount: Extra inputs are not permitted"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_v2_is_the_rendered_app_config(overlay: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    rs = one(render(overlay), "RayService")
    app = load_app_config(REPO_ROOT / profile(overlay).app_config)
    assert rs["spec"]["serveConfigV2"] == serve_config_text(app)
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    assert config["proxy_location"] == PROXY_LOCATION == "EveryNode"
    assert config["http_options"]["host"] == "0.0.0.0"
    kinds = []
    for application in config["applications"]:
        args = APP_ARGS.validate_python(application["args"])
        kinds.append(args.kind)
        if isinstance(args, ModelAppArgs):
            assert args.repository.root == "/mnt/models"
    targets = app.jobs.targets if app.jobs else []
    assert kinds == ["server"] + ["model"] * len(app.models) + ["consumer"] * len(targets)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_and_metrics_ports_on_every_ray_container(overlay: str) -> None:
    rs = one(render(overlay), "RayService")
    app = load_app_config(REPO_ROOT / profile(overlay).app_config)
    cluster = rs["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        container = group["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == app.http.port == 8000
        assert ports["metrics"] == int(group["rayStartParams"]["metrics-export-port"]) == 8080
    for group in cluster["workerGroupSpecs"]:
        # KubeRay injects the Serve-aware readiness probe only when none is set.
        assert "readinessProbe" not in group["template"]["spec"]["containers"][0]
