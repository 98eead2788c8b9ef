"""OIP over gRPC in the manifests: serveConfigV2's grpc_options, the opt-in component's
Service and NetworkPolicy (validated like the other manifests), and the port coupling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.config import AppConfig, load_app_config
from serve_app.config.grpc import SERVICER_FUNCTION
from serve_app.k8s.profiles import PROFILES
from serve_app.k8s.render import GRPC_COMPONENT_PORT, check_cluster_app
from tests.k8s.conftest import overlay_with_components
from tests.k8s.test_manifests import REPO_ROOT, core_errors, crd_errors, one, profile


def serve_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"]))


@pytest.mark.parametrize("overlay", [p.name for p in PROFILES])
def test_component_exposes_the_grpc_port_of_serve_config(overlay: str, tmp_path: Path) -> None:
    docs = overlay_with_components(tmp_path, overlay, "grpc")
    assert crd_errors(one(docs, "RayService")) == []
    grpc = serve_config(docs)["grpc_options"]
    assert grpc == {
        "port": GRPC_COMPONENT_PORT,
        "grpc_servicer_functions": [SERVICER_FUNCTION],
        "request_timeout_s": 30.0,
    }
    service = one(docs, "Service", "serve-app-grpc")
    assert service["spec"]["ports"] == [
        {
            "name": "grpc",
            "port": GRPC_COMPONENT_PORT,
            "targetPort": GRPC_COMPONENT_PORT,
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        }
    ]
    ray_pod = one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    labels = ray_pod["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector == {**labels, "ray.io/serve": "true"}
    policy = one(docs, "NetworkPolicy", "serve-app-grpc")
    assert core_errors(policy) == []
    import kubernetes.client

    kubernetes.client.V1Service.model_validate(service)  # strict, like core_errors
    assert policy["spec"]["podSelector"]["matchLabels"] == labels
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9000}]}]
    cluster_config = load_app_config(REPO_ROOT / profile(overlay).app_config)
    assert (cluster_config.grpc.enabled, cluster_config.grpc.port) == (True, 9000)


def test_a_cluster_config_on_another_grpc_port_is_refused() -> None:
    app = load_app_config(REPO_ROOT / PROFILES[0].app_config).model_dump()
    app["grpc"]["port"] = 9001
    with pytest.raises(ValueError) as info:
        check_cluster_app(AppConfig.model_validate(app), PROFILES[0])
    assert str(info.value) == (
        "grpc.port must be 9000 in a cluster config (the port of kuberay/components/grpc's "
        "Service and NetworkPolicy)"
    )
