"""The Ray pods' NetworkPolicy in the rendered overlays (who may reach which port), and
the opt-in GCS fault tolerance component. Offline, like the other manifest tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.config import load_app_config
from serve_app.k8s.profiles import PROFILES
from tests.k8s.conftest import overlay_with_components
from tests.k8s.test_manifests import (
    OVERLAYS,
    REPO_ROOT,
    crd_errors,
    one,
    profile,
    ray_pod_templates,
    render,
)
from tests.k8s.test_security import head_container, rayservice

OPERATOR_NAMESPACE = "kuberay-system"
MONITORING_NAMESPACE = "monitoring"


def network_policy(overlay: str) -> dict[str, Any]:
    return one(render(overlay), "NetworkPolicy", "serve-app-ray")


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    assert set(selector or {}) <= {"matchLabels"}, "only matchLabels is evaluated here"
    return (selector or {}).get("matchLabels", {}).items() <= labels.items()


def admitted_ports(policy: dict[str, Any], peer: dict[str, Any], ports: list[int]) -> list[int]:
    """Ports of a selected pod that ``peer`` (namespace labels, pod labels, same namespace
    or not) may connect to, by the NetworkPolicy rules (one policy, ingress only)."""

    def from_peer(rule: dict[str, Any]) -> bool:
        if "from" not in rule:
            return True
        for source in rule["from"]:
            if "ipBlock" in source:
                continue
            if "namespaceSelector" in source:
                ns_ok = _matches(source["namespaceSelector"], peer["namespace"])
            else:
                ns_ok = peer["same_namespace"]
            pod_ok = "podSelector" not in source or _matches(source["podSelector"], peer["pod"])
            if ns_ok and pod_ok:
                return True
        return False

    open_ports: set[int] = set()
    for rule in policy["spec"]["ingress"]:
        if from_peer(rule):
            rule_ports = {p["port"] for p in rule.get("ports", [])}
            assert all(p.get("protocol") == "TCP" for p in rule.get("ports", []))
            open_ports |= set(ports) if not rule_ports else rule_ports
    return sorted(p for p in ports if p in open_ports)


def peers(overlay: str) -> dict[str, dict[str, Any]]:
    docs = render(overlay)
    ray_pod = ray_pod_templates(one(docs, "RayService"))["head"]["metadata"]["labels"]
    job_pod = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    app_ns = {"kubernetes.io/metadata.name": "serving"}

    def peer(ns: str | None, pod: dict[str, str]) -> dict[str, Any]:
        labels = app_ns if ns is None else {"kubernetes.io/metadata.name": ns}
        return {"namespace": labels, "pod": pod, "same_namespace": ns is None}

    # The Helm chart's operator pod labels (app.kubernetes.io/component: the chart name).
    operator = {
        "app.kubernetes.io/name": "kuberay-operator",
        "app.kubernetes.io/component": "kuberay-operator",
    }
    return {
        "ray pod of this service": peer(None, ray_pod),
        "populate Job": peer(None, job_pod),
        "other pod, same namespace": peer(None, {"app": "web"}),
        "ingress controller": peer("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
        "KubeRay operator": peer(OPERATOR_NAMESPACE, operator),
        "other pod, operator namespace": peer(OPERATOR_NAMESPACE, {"app": "x"}),
        "Prometheus": peer(MONITORING_NAMESPACE, {"app.kubernetes.io/name": "prometheus"}),
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_serve_everywhere_and_the_rest_narrowly(overlay: str) -> None:
    policy = network_policy(overlay)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    gcs, client, dashboard, metrics, serve, agent = 6379, 10001, 8265, 8080, 8000, 52365
    ports = [gcs, client, dashboard, metrics, serve, agent]
    got = {name: admitted_ports(policy, p, ports) for name, p in peers(overlay).items()}
    assert got == {
        "ray pod of this service": sorted(ports),
        "populate Job": [serve],
        "other pod, same namespace": [serve],
        "ingress controller": [serve],
        "KubeRay operator": [serve, dashboard],
        "other pod, operator namespace": [serve],
        "Prometheus": [serve, metrics],
    }
    # The numbers are the ones the containers and Ray use.
    rs = rayservice(overlay)
    head = {p["name"]: p["containerPort"] for p in head_container(rs)["ports"]}
    app = load_app_config(REPO_ROOT / profile(overlay).app_config)
    assert (head["serve"], head["dashboard"], head["metrics"]) == (
        app.http.port,
        dashboard,
        metrics,
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_selects_the_ray_pods_by_stable_labels(overlay: str) -> None:
    docs = render(overlay)
    selector = network_policy(overlay)["spec"]["podSelector"]
    templates = ray_pod_templates(one(docs, "RayService"))
    assert len(templates) >= 2  # head and the worker groups
    for name, template in templates.items():
        assert _matches(selector, template["metadata"]["labels"]), name
    assert not _matches(selector, one(docs, "Job")["spec"]["template"]["metadata"]["labels"])
    # Not KubeRay's per-cluster labels: their values change with every NewCluster upgrade.
    assert not any(k.startswith("ray.io/") for k in selector["matchLabels"])


# GCS fault tolerance (opt-in component)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gcs_ft_is_opt_in_and_only_adds_the_redis_options(overlay: str, tmp_path: Path) -> None:
    plain = rayservice(overlay)
    assert "gcsFaultToleranceOptions" not in plain["spec"]["rayClusterConfig"]
    docs = overlay_with_components(tmp_path, overlay, "gcs-ft")
    rs = one(docs, "RayService")
    assert crd_errors(rs) == []
    options = rs["spec"]["rayClusterConfig"].pop("gcsFaultToleranceOptions")
    assert options == {
        "redisAddress": "serve-app-redis:6379",
        "redisPassword": {
            "valueFrom": {"secretKeyRef": {"name": "serve-app-redis", "key": "password"}}
        },
    }
    assert rs == plain
    assert sorted(d["kind"] for d in docs) == sorted(d["kind"] for d in render(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gcs_ft_passes_kuberay_validation(overlay: str, tmp_path: Path) -> None:
    """The checks of KubeRay 1.7's validation that GCS FT options bring in."""
    rs = one(overlay_with_components(tmp_path, overlay, "gcs-ft"), "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    options = cluster["gcsFaultToleranceOptions"]
    annotations = rs["metadata"].get("annotations", {})
    assert "ray.io/ft-enabled" not in annotations
    assert "ray.io/external-storage-namespace" not in annotations
    head = cluster["headGroupSpec"]
    assert "redis-password" not in head["rayStartParams"]
    head_env = {e["name"] for e in head["template"]["spec"]["containers"][0]["env"]}
    assert head_env & {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS", "REDIS_USERNAME"} == set()
    # redis backend: no embedded storage; each cluster its own namespace (its UID).
    assert options.keys() == {"redisAddress", "redisPassword"}


def test_no_overlay_includes_an_optional_component() -> None:
    for p in PROFILES:
        text = (REPO_ROOT / p.overlay_dir / "kustomization.yaml").read_text()
        assert "components" not in yaml.safe_load(text), p.name
