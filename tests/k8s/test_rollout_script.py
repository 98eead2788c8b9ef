"""kuberay/scripts/rollout-model-version.sh: weights first, then the config.

kubectl and serve-app are stand-ins on PATH that log each call: the script's order,
what it applies in step 1 and where it stops on a failed Job are what is tested.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "kuberay" / "scripts" / "rollout-model-version.sh"
DOCS = [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "serve-app-models"},
     "data": {"MODELS": "minilm:2"}},
    {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "serve-app-populate-models"}},
    {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "serve-app"}},
]  # fmt: skip
KUBECTL = """#!/usr/bin/env bash
echo "kubectl $*" >> "$LOG"
case "$1" in
  kustomize) cat "$RENDERED" ;;
  apply) for a in "$@"; do [ -f "$a" ] && cp "$a" "$LOG.applied"; done; true ;;
  get) n=$(cat "$LOG.n" 2>/dev/null || echo 0); echo $((n + 1)) > "$LOG.n"
       if [ "$n" -ge "$POLLS" ]; then printf '%s ' "$RESULT"; fi ;;
esac
"""
SERVE_APP = '#!/usr/bin/env bash\necho "serve-app $*" >> "$LOG"\n'


def run(tmp_path: Path, result: str, polls: int = 2) -> tuple[subprocess.CompletedProcess, list]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("kubectl", KUBECTL), ("serve-app", SERVE_APP)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(DOCS))
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LOG": str(log),
        "RENDERED": str(rendered),
        "RESULT": result,
        "POLLS": str(polls),
        "POLL_S": "0",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), "kuberay/overlays/gpu", "serving"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return proc, log.read_text().splitlines()


def test_publishes_then_applies_the_rayservice(tmp_path: Path) -> None:
    proc, calls = run(tmp_path, "Complete")
    assert proc.returncode == 0, proc.stderr
    get = (
        "kubectl get job serve-app-populate-models -n serving -o jsonpath="
        '{range .status.conditions[?(@.status=="True")]}{.type} {end}'
    )
    assert [c.split(" -f ")[0] for c in calls] == [
        "kubectl kustomize kuberay/overlays/gpu",
        "kubectl delete job serve-app-populate-models -n serving --ignore-not-found --wait=true",
        "kubectl apply --server-side --field-manager=serve-app -n serving",
        get, get, get,  # not done, not done, Complete
        "serve-app k8s apply -n serving",
        "serve-app k8s wait serve-app -n serving --timeout-s 1800",
    ]  # fmt: skip
    applied = list(yaml.safe_load_all((tmp_path / "calls.log.applied").read_text()))
    assert [d["kind"] for d in applied] == ["ConfigMap", "Job"]  # no RayService in step 1
    assert "job/serve-app-populate-models complete after" in proc.stdout


def test_failed_job_leaves_the_rayservice_alone(tmp_path: Path) -> None:
    proc, calls = run(tmp_path, "Failed", polls=0)
    assert proc.returncode == 1
    assert proc.stderr == (
        "job/serve-app-populate-models failed; the RayService was not changed. "
        "kubectl logs job/serve-app-populate-models\n"
    )
    assert not [c for c in calls if c.startswith("serve-app")]
