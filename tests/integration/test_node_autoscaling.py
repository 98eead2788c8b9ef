"""Node-level autoscaling end to end: load -> more replicas -> pending GPU demand -> the
autoscaler adds a GPU worker node -> requests served there -> scale-down and node removal.

``loadtest.nodes.experiment`` runs on a private fake multi-node cluster
(``AutoscalingCluster``'s provider driving Ray's real autoscaler). That cluster needs its
own driver, so the experiment runs in a subprocess whatever Ray this session has started;
its processes are found by run id and must all be gone afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from loadtest.nodes import experiment as nas

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 170
SETTLE_BOUND_S = 40.0
"""Load stop -> replicas back to min_replicas, and -> idle node removed (the run uses a
3 s downscale delay and a 6 s node idle timeout; 2 shared cores make it slower)."""


def run_short_experiment(
    out: Path, run_id: str
) -> tuple[subprocess.CompletedProcess[str], list[int], bool]:
    """The same chain, with the load stopped 3 s after a replica runs on the new node.

    Returns the finished run, the pids of the run's Ray processes still alive after it
    exited, and whether its temp dir was left; both are cleaned up here in any case (also
    when the run times out), never by name and never beyond this run.
    """
    cmd = [
        sys.executable,
        "-m",
        "loadtest.nodes.experiment",
        "--out",
        str(out),
        "--run-id",
        run_id,
        "--load-s",
        "60",
        "--stop-after-new-replica-s",
        "3",
        "--settle-timeout-s",
        str(SETTLE_BOUND_S),
    ]
    temp_dir = Path(nas.cluster_temp_dir(run_id))
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    finally:
        leftovers = [p.pid for p in nas.find_cluster_processes(run_id)]
        temp_left = temp_dir.exists()
        if leftovers:
            nas.kill_cluster_processes(run_id)
        shutil.rmtree(temp_dir, ignore_errors=True)
    return proc, leftovers, temp_left


def test_gpu_node_added_under_load_and_removed_after(tmp_path: Path) -> None:
    run_id = "t" + uuid.uuid4().hex[:9]
    out = tmp_path / "node_autoscaling.json"
    proc, leftovers, temp_left = run_short_experiment(out, run_id)
    log = f"\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    # The run cleaned up after itself: no Ray process of its cluster, no temp dir.
    assert leftovers == [], f"Ray processes left behind: {leftovers}{log}"
    assert not temp_left, log
    assert out.exists(), f"no results (exit {proc.returncode}){log}"
    result = json.loads(out.read_text())
    ev, d, req = result["events"], result["durations"], result["requests"]

    # A GPU worker node joined while the load ran, after replicas asked for GPUs.
    assert result["baseline_gpu_workers"] == ["00001"], log
    assert result["new_gpu_workers"] == ["00002"], log
    assert ev["first_replica_pending"] is not None, log
    assert ev["first_replica_pending"] <= ev["new_node_joined"] <= ev["load_stop"], ev
    # Requests were served by a replica on that new node: strictly, every request is
    # a 200 with outputs, and every one is traced to its replica through the access log.
    assert req["failed"] == 0 and req["failures"] == {}, req
    assert req["ok"] > 0, req
    assert req["by_node"].get("unattributed", 0) == 0, req
    assert req["on_new_nodes"] > 0, req
    assert sum(req["by_node"].values()) == req["ok"], req
    assert ev["first_request_served_on_new_node"] >= ev["new_node_joined"], ev
    # After the load: back to min_replicas and one GPU node, within the bound.
    assert 0 <= d["load_stop_to_replicas_scaled_down_s"] <= SETTLE_BOUND_S, d
    assert 0 <= d["load_stop_to_node_removed_s"] <= SETTLE_BOUND_S, d
    assert len(result["removed_gpu_workers"]) == 1, result["removed_gpu_workers"]
    last = [x for x in result["timeline"] if "error" not in x][-1]
    assert len(last["gpu_workers"]) == 1 and last["replica_states"] == {"RUNNING": 1}, last
    assert all(result["checks"].values()), result["checks"]
    assert proc.returncode == 0, log
