"""Samples nodes, Serve and the autoscaler through Ray's own APIs while the load runs."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import ray

from loadtest.nodes.load import LoadStats
from loadtest.nodes.settings import APP, DEPLOYMENT, Settings, short_id


class Recorder:
    """Samples nodes, Serve and the autoscaler every ``sample_interval_s`` in a thread
    (the only caller of ``serve.status()``, which is not thread-safe in 2.60). Times are
    ``time.monotonic()``; ``analyse`` makes them relative to the load start."""

    def __init__(self, s: Settings, gcs_address: str, load: LoadStats) -> None:
        self.s, self.gcs_address, self.load = s, gcs_address, load
        self.samples: list[dict[str, Any]] = []
        self.replicas: dict[str, dict[str, Any]] = {}
        self.baseline_nodes: set[str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def last(self) -> dict[str, Any] | None:
        good = [x for x in self.samples if "error" not in x]
        return good[-1] if good else None

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.samples.append(self.sample())
            except Exception as e:  # noqa: BLE001 - a failed sample is data, not a crash
                self.samples.append({"t": start, "error": repr(e)})
            self._stop.wait(max(0.0, self.s.sample_interval_s - (time.monotonic() - start)))

    def sample(self) -> dict[str, Any]:
        from ray import serve
        from ray.autoscaler.v2.sdk import get_cluster_status
        from ray.serve.context import _get_global_client

        t = time.monotonic()
        alive = [n for n in ray.nodes() if n["Alive"]]
        gpu_workers = sorted(str(short_id(n["NodeID"])) for n in alive if n["Resources"].get("GPU"))
        apps = serve.status().applications
        states: dict[str, int] = {}
        if APP in apps and DEPLOYMENT in apps[APP].deployments:
            replica_states = apps[APP].deployments[DEPLOYMENT].replica_states
            states = {str(getattr(k, "value", k)): v for k, v in replica_states.items() if v}
        client = _get_global_client()
        assert client is not None
        dep = client.get_serve_details().get("applications", {}).get(APP, {})
        dep = dep.get("deployments", {}).get(DEPLOYMENT, {})
        running_by_node: Counter[str] = Counter()
        for r in dep.get("replicas", []):
            info = self.replicas.setdefault(
                r["replica_id"],
                {
                    "replica_id": r["replica_id"],
                    "node": None,
                    "first_seen_t": t,
                    "running_t": None,
                    "gone_t": None,
                    "log_file_path": None,
                },
            )
            info["node"] = short_id(r.get("node_id")) or info["node"]
            info["log_file_path"] = r.get("log_file_path") or info["log_file_path"]
            if r["state"] == "RUNNING":
                running_by_node[str(info["node"])] += 1
                info["running_t"] = info["running_t"] or t
        live = {r["replica_id"] for r in dep.get("replicas", [])}
        for rid, info in self.replicas.items():
            if rid not in live and info["gone_t"] is None:
                info["gone_t"] = t
        if (
            self.s.stop_after_new_replica_s is not None
            and self.baseline_nodes is not None
            and self.load.stop_at is None
            and set(running_by_node) - self.baseline_nodes
        ):
            self.load.stop_at = t + self.s.stop_after_new_replica_s
        cs = get_cluster_status(self.gcs_address)
        demand = cs.resource_demands.ray_task_actor_demand
        return {
            "t": t,
            "apps": {n: str(getattr(a.status, "value", a.status)) for n, a in apps.items()},
            "nodes_alive": len(alive),
            "gpu_workers": gpu_workers,
            "replica_states": states,
            "target_replicas": dep.get("target_num_replicas"),
            # Serve knows a replica's node once its actor is placed and started.
            "unplaced_replicas": sum(
                1
                for r in dep.get("replicas", [])
                if r["state"] == "STARTING" and not r.get("node_id")
            ),
            # Actor bundles with a GPU that no node can take: what the autoscaler acts on.
            "gpu_demand": sum(
                b.count for d in demand for b in d.bundles_by_count if b.bundle.get("GPU")
            ),
            "pending_launches": sum(r.count for r in cs.pending_launches),
            "pending_nodes": len(cs.pending_nodes),
            "running_by_node": dict(running_by_node),
            "ok": self.load.ok,
            "failed": self.load.failed,
            "in_flight": self.load.in_flight,
        }
