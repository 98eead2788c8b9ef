"""Node-level autoscaling on one machine, end to end, measured.

HTTP load raises the ``mlp-head`` replicas (Serve autoscaling on ongoing requests). Each
replica asks for half a logical GPU and the head has none, so new replicas pend; Ray's
autoscaler (v2 by default, the code KubeRay runs in the head pod) launches a GPU worker
node through the fake multi-node provider of ``ray.cluster_utils.AutoscalingCluster``;
replicas start there and serve; after the load, replicas scale down and the node left
idle is removed. Nodes, replicas and the autoscaler are sampled every 0.5 s::

    python -m loadtest.nodes.experiment --out loadtest/results/node_autoscaling.json

The cluster is private to the run (its own ports, temp dir and processes), so it neither
touches nor is touched by another Ray on the machine.
``tests/integration/test_node_autoscaling.py`` runs a shorter version in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.harness.machine import free_port, wait_for
from loadtest.nodes.processes import (
    cluster_temp_dir,
    find_cluster_processes,
    kill_cluster_processes,
)
from loadtest.nodes.settings import Settings, make_app_config

__all__ = ["cluster_temp_dir", "find_cluster_processes", "kill_cluster_processes", "main"]


def run_experiment(
    s: Settings, run_id: str, log: Callable[[str], None] = print, keep_temp: bool = False
) -> dict[str, Any]:
    """Start the private cluster, deploy mlp-head from an AppConfig, load it, wait for the
    scale-down, and return the results. The cluster is always torn down."""
    import asyncio

    import ray

    from loadtest.nodes.analysis import analyse
    from loadtest.nodes.cluster import make_cluster
    from loadtest.nodes.load import LoadStats, run_load
    from loadtest.nodes.recorder import Recorder
    from serve_app.deploy.serve_config import render_serve_config
    from serve_app.local import cluster as local
    from serve_app.local.demo import ensure_demo_models

    cluster = make_cluster(s, run_id)
    repo = os.path.join(cluster.temp_dir, "model-repository")
    app = make_app_config(s, repo, free_port())
    # HeadOnly: every fake node shares 127.0.0.1, so per-node proxies would collide.
    serve_config = render_serve_config(app, proxy_location="HeadOnly")
    names = [a["name"] for a in serve_config["applications"]]
    stats = LoadStats()
    rec = Recorder(s, cluster.address, stats)

    def last() -> dict[str, Any]:
        return rec.last() or {"apps": {}, "replica_states": {}, "gpu_workers": [], "t": 0.0}

    def deployed() -> bool:
        failed = {n: a for n, a in last()["apps"].items() if a in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise local.DeployFailed(f"applications failed: {failed}")
        return all(last()["apps"].get(n) == "RUNNING" for n in names)

    def at_min(x: dict[str, Any]) -> bool:
        return x["replica_states"] == {"RUNNING": s.min_replicas}

    try:
        log(f"starting cluster {run_id} (GCS {cluster.address}, temp {cluster.temp_dir})")
        cluster.start(override_env=local.ingress_environment(app.http, app.server_name))
        ensure_demo_models(repo, progress=False, with_onnx=False)
        ray.init(address=cluster.address, log_to_driver=False)
        local.deploy_config(serve_config)
        rec.start()
        log("deploying (the first replica needs a GPU node too)")
        wait_for(deployed, s.deploy_timeout_s, f"applications {names} RUNNING")
        wait_for(
            lambda: at_min(last()) and last()["target_replicas"] == s.min_replicas,
            60,
            "steady state before the load",
        )
        rec.baseline_nodes = set(last()["gpu_workers"])
        url = f"http://127.0.0.1:{app.http.port}{app.models[0].route_prefix}/infer"
        log(f"load: {s.concurrency} clients for up to {s.load_s:.0f} s -> {url}")
        asyncio.run(run_load(url, s, stats))
        log(f"load stopped: {stats.ok} ok, {stats.failed} failed; waiting for the scale-down")
        peak = max(len(x.get("gpu_workers", ())) for x in rec.samples)
        try:
            wait_for(
                lambda: (
                    last()["t"] > (stats.stopped or 0)
                    and at_min(last())
                    and len(last()["gpu_workers"]) < peak
                ),
                s.settle_timeout_s,
                "scale-down and node removal",
            )
        except TimeoutError as e:
            log(f"warning: {e}")
        time.sleep(2 * s.sample_interval_s)
        rec.stop()
        logs_dir = Path(cluster.temp_dir) / "session_latest" / "logs"
        return {
            **analyse(s, rec, stats, logs_dir),
            "autoscaling_cluster_config": cluster.config,
            "serve_config": serve_config,
            "app_config": app.model_dump(mode="json"),
        }
    finally:
        rec.stop()
        ray.shutdown()
        cluster.shutdown(keep_temp=keep_temp)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.nodes.experiment", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument(
        "--out",
        default="loadtest/results/node_autoscaling.json",
        help="results JSON; the Markdown summary goes next to it (.md)",
    )
    p.add_argument("--run-id", default=None, help="names the cluster's temp dir and marker")
    p.add_argument("--autoscaler-v1", action="store_true", help="use autoscaler v1")
    p.add_argument("--keep-temp", action="store_true", help="keep the Ray temp dir (logs)")
    defaults = Settings()
    for name in (
        "load_s",
        "concurrency",
        "max_requests",
        "stop_after_new_replica_s",
        "downscale_delay_s",
        "idle_timeout_minutes",
        "settle_timeout_s",
    ):
        default = getattr(defaults, name)
        kind = int if isinstance(default, int) else float
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=default,
            help=f"Settings.{name} (default {default})",
        )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment, write JSON + Markdown, print the summary; 1 if a check failed."""
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import: without it a driver's
    # ray.init("127.0.0.1:<port>") dials the host's routable address instead of loopback.
    # Set the loopback-only variables (never overriding the user's) before importing ray.
    from serve_app.local.cluster import prepare_environment

    prepare_environment()
    from loadtest.nodes.report import environment, summary_markdown

    args = parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__}
    settings = Settings(**fields, autoscaler_v2=not args.autoscaler_v1)
    run_id = args.run_id or uuid.uuid4().hex[:10]
    # SIGTERM (e.g. a test's timeout) must still run the cleanup in ``finally``.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t = time.monotonic()
    result = {**environment(), "run_id": run_id, "settings": asdict(settings)}
    result.update(
        run_experiment(settings, run_id, lambda msg: print(msg, flush=True), args.keep_temp)
    )
    result["experiment_wall_s"] = round(time.monotonic() - t, 1)
    result["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    summary = summary_markdown(result)
    out.with_suffix(".md").write_text(summary)
    print(
        f"\n{summary}\nwrote {out} and {out.with_suffix('.md')} ({result['experiment_wall_s']} s)"
    )
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
