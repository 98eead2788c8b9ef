"""A private ``AutoscalingCluster``: its own ports, temp dir and processes, so it neither
touches nor is touched by another Ray on the machine. Imports Ray: the entry point sets
the loopback environment before importing this module."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import (
    FAKE_HEAD_NODE_ID,
    FAKE_HEAD_NODE_TYPE,
)
from ray.cluster_utils import AutoscalingCluster

from loadtest.harness.machine import free_port
from loadtest.nodes.processes import MARKER_ENV, cluster_temp_dir, kill_cluster_processes
from loadtest.nodes.settings import WORKER_TYPE, Settings

"""Set in the environment of ``ray start``; every process of the cluster inherits it."""

# Upstream's fake_multi_node/example.yaml, which the 2.60 wheel does not ship. The provider
# is declared "external" (same class) so the autoscaler does not read that file either.
FAKE_CLUSTER_BASE: dict[str, Any] = {
    "cluster_name": "fake_multinode",
    "max_workers": 8,
    "provider": {
        "type": "external",
        "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    },
    "head_node_type": FAKE_HEAD_NODE_TYPE,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "file_mounts_sync_continuously": False,
    **{k: {} for k in ("auth", "docker", "file_mounts")},
    **{
        k: []
        for k in (
            "cluster_synced_files",
            "rsync_exclude",
            "rsync_filter",
            "initialization_commands",
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        )
    },
}


class LocalAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` (same fake provider, real autoscaler, same environment) made
    private to one run. Upstream ``start()``/``shutdown()`` run ``ray stop --force``, which
    kills every Ray of the user on the machine, its head takes the default ports, and its
    config reads an ``example.yaml`` missing from the 2.60 wheel."""

    def __init__(
        self,
        head_resources: dict[str, Any],
        worker_node_types: dict[str, Any],
        *,
        run_id: str,
        autoscaler_v2: bool = True,
        **config_kwargs: Any,
    ) -> None:
        self.run_id = run_id
        self.gcs_port = free_port()
        self.temp_dir = cluster_temp_dir(run_id)
        super().__init__(dict(head_resources), worker_node_types, autoscaler_v2, **config_kwargs)

    @property
    def address(self) -> str:
        """GCS address to ``ray.init`` with."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def config(self) -> dict[str, Any]:
        """The autoscaling config given to the autoscaler."""
        return copy.deepcopy(self._config)

    def _generate_config(
        self,
        head_resources: dict[str, Any],
        worker_node_types: dict[str, Any],
        autoscaler_v2: bool = False,
        **config_kwargs: Any,
    ) -> dict[str, Any]:
        config = copy.deepcopy(FAKE_CLUSTER_BASE)
        config["available_node_types"] = copy.deepcopy(worker_node_types)
        config["available_node_types"][FAKE_HEAD_NODE_TYPE] = {
            "resources": dict(head_resources),
            "node_config": {},
            "max_workers": 0,
        }
        # Worker nodes join this GCS, not 6379, which another Ray may own.
        config["provider"]["gcs_address"] = self.address
        if autoscaler_v2:
            config["provider"].update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
        config.update(config_kwargs)
        return config

    def start(
        self,
        _system_config: dict[str, Any] | None = None,
        override_env: dict[str, str] | None = None,
    ) -> None:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        # `ray start` turns token auth on when a token exists; a driver connecting to a
        # running cluster does not. Decide once, with the function `ray start` uses, so the
        # cluster (which inherits RAY_AUTH_MODE) and this driver agree.
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        os.makedirs(self.temp_dir, exist_ok=True)
        config_path = os.path.join(self.temp_dir, "autoscaling.json")
        Path(config_path).write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        cmd = [
            shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray",
            "start",
            "--head",
            f"--port={self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            f"--autoscaling-config={config_path}",
            f"--num-cpus={head.pop('CPU', 0)}",
            f"--num-gpus={head.pop('GPU', 0)}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            "--dashboard-agent-listen-port=0",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
        ]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        if _system_config is not None:
            cmd.append(f"--system-config={json.dumps(_system_config)}")
        env = dict(os.environ, AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1")
        env[MARKER_ENV] = self.run_id
        if self._autoscaler_v2:
            env.update(
                RAY_enable_autoscaler_v2="1",
                RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
                RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
            )
        env.update(override_env or {})
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)

    def shutdown(self, keep_temp: bool = False) -> None:
        kill_cluster_processes(self.run_id)
        if not keep_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def make_cluster(s: Settings, run_id: str) -> LocalAutoscalingCluster:
    """A head with no GPU (like the RayService head) and one GPU worker type, 0..N nodes."""
    worker = {"CPU": s.worker_cpus, "GPU": s.worker_gpus}
    return LocalAutoscalingCluster(
        {"CPU": s.head_cpus, "GPU": 0},
        {
            WORKER_TYPE: {
                "resources": worker,
                "node_config": {},
                "min_workers": 0,
                "max_workers": s.max_workers,
            }
        },
        run_id=run_id,
        autoscaler_v2=s.autoscaler_v2,
        max_workers=s.max_workers,
        idle_timeout_minutes=s.idle_timeout_minutes,
    )
