"""A config's resource demand at start and at full scale, against a machine (no Ray)."""

from __future__ import annotations

from serve_app.deploy.demand import (
    DeploymentDemand,
    compare,
    deployment_demands,
    replica_counts,
    replica_resources,
    total,
)

GIB = 2**30


def app(name: str, **deployment: object) -> dict[str, object]:
    return {"name": name, "deployments": [{"name": "D", **deployment}]}


def test_replica_resources_default_to_one_cpu_and_sum_bundles() -> None:
    assert replica_resources({}) == {"CPU": 1.0}
    assert replica_resources({"ray_actor_options": {"num_cpus": 0}}) == {}
    options = {"num_cpus": 0.5, "num_gpus": 0.25, "memory": GIB, "resources": {"tpu": 1}}
    assert replica_resources({"ray_actor_options": options}) == {
        "CPU": 0.5,
        "GPU": 0.25,
        "memory": float(GIB),
        "tpu": 1.0,
    }
    bundles = [{"CPU": 1, "GPU": 1}, {"CPU": 2}]
    assert replica_resources({"placement_group_bundles": bundles}) == {"CPU": 3.0, "GPU": 1.0}


def test_replica_counts_at_start_and_at_full_scale() -> None:
    assert replica_counts({}) == (1, 1)
    assert replica_counts({"num_replicas": 3}) == (3, 3)
    auto = {"min_replicas": 0, "max_replicas": 4}
    assert replica_counts({"autoscaling_config": auto}) == (0, 4)
    assert replica_counts({"autoscaling_config": auto | {"initial_replicas": 2}}) == (2, 4)
    assert replica_counts({"num_replicas": "auto"}) == (1, 100)


def test_two_versions_of_two_one_cpu_replicas_do_not_fit_two_cpus() -> None:
    """The issue's config: minilm with version_policy latest_n: 2 serves two versions,
    each 2 replicas x 1 CPU, on a 2-CPU machine; it waited 300 s saying nothing."""
    config = {
        "applications": [
            app("oip", ray_actor_options={"num_cpus": 0}),
            app("minilm", num_replicas=2, ray_actor_options={"num_cpus": 1.0}),
            app("minilm-v1", num_replicas=2, ray_actor_options={"num_cpus": 1.0}),
            app(
                "jobs",
                ray_actor_options={"num_cpus": 0.5},
                autoscaling_config={"min_replicas": 0, "max_replicas": 2},
            ),
        ]
    }
    demands = deployment_demands(config)
    assert demands[1] == DeploymentDemand("minilm", "D", {"CPU": 1.0}, 2, 2)
    assert total(demands, "start") == {"CPU": 4.0}
    assert total(demands, "full") == {"CPU": 5.0}
    lines, fits = compare(demands, {"CPU": 2.0, "GPU": 0.0, "memory": 8.0 * GIB}, "this machine")
    assert not fits
    assert lines == [
        "resources at start (num_replicas, or initial/min_replicas): CPU 4",
        "resources at full scale (max_replicas): CPU 5",
        "this machine: CPU 2, memory 8.0 GiB",
        "error: the start needs more than this machine has (CPU 2 short); replicas would "
        "stay pending:",
        "  minilm/D: 2 x CPU 1",
        "  minilm-v1/D: 2 x CPU 1",
    ]


def test_a_config_that_fits_at_start_warns_about_full_scale() -> None:
    config = {
        "applications": [
            app("m", num_replicas=1, ray_actor_options={"num_cpus": 1, "num_gpus": 0.5}),
            app(
                "j",
                ray_actor_options={"num_cpus": 1},
                autoscaling_config={"min_replicas": 1, "max_replicas": 3},
            ),
        ]
    }
    lines, fits = compare(deployment_demands(config), {"CPU": 2.0, "GPU": 1.0}, "the demo's Ray")
    assert fits
    assert lines == [
        "resources at start (num_replicas, or initial/min_replicas): CPU 2, GPU 0.5",
        "resources at full scale (max_replicas): CPU 4, GPU 0.5",
        "the demo's Ray: CPU 2, GPU 1",
        "warning: at full scale the config needs more than the demo's Ray has (CPU 2 short): "
        "autoscaling stops earlier",
    ]
