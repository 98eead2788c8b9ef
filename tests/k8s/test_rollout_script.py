"""kuberay/scripts/rollout-model-version.sh: weights first, then what the workers read,
then the config.

kubectl and serve-app are stand-ins on PATH that log each call: the script's order,
what each apply sends and where it stops (a failed Job, a refused RayService apply) are
what is tested.
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
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "serve-app-publish"},
     "data": {"MODELS": "minilm:2:/opt/model-sources/minilm/2"}},
    {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "serve-app-populate-models"}},
    {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "serve-app"}},
]  # fmt: skip
BEFORE = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "serve-app-models", "uid": "u-1", "resourceVersion": "7",
                       "labels": {"app.kubernetes.io/part-of": "serve-app"}},
          "data": {"MODELS": "minilm:1"}}  # fmt: skip
KUBECTL = """#!/usr/bin/env bash
echo "kubectl $*" >> "$LOG"
case "$1 $2" in
  kustomize*) cat "$RENDERED" ;;
  apply*) n=$(ls "$LOG".applied.* 2>/dev/null | wc -l)
          for a in "$@"; do [ -f "$a" ] && cp "$a" "$LOG.applied.$n"; done; true ;;
  "get configmap") cat "$BEFORE" ;;
  "get job") n=$(cat "$LOG.n" 2>/dev/null || echo 0); echo $((n + 1)) > "$LOG.n"
       if [ "$n" -ge "$POLLS" ]; then printf '%s ' "$RESULT"; fi ;;
esac
"""
SERVE_APP = """#!/usr/bin/env bash
echo "serve-app $*" >> "$LOG"
if [ "$2" = apply ] && [ -n "$APPLY_FAILS" ]; then echo "$APPLY_FAILS" >&2; exit 2; fi
"""
GET_JOB = (
    "kubectl get job serve-app-populate-models -n serving -o jsonpath="
    '{range .status.conditions[?(@.status=="True")]}{.type} {end}'
)
APPLY = "kubectl apply --server-side --field-manager=serve-app -n serving"


def run(
    tmp_path: Path, result: str, polls: int = 2, apply_fails: str = ""
) -> tuple[subprocess.CompletedProcess, list[str], list[list[dict]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("kubectl", KUBECTL), ("serve-app", SERVE_APP)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(DOCS))
    before = tmp_path / "before.yaml"
    before.write_text(yaml.safe_dump(BEFORE))
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LOG": str(log),
        "RENDERED": str(rendered),
        "BEFORE": str(before),
        "RESULT": result,
        "POLLS": str(polls),
        "POLL_S": "0",
        "APPLY_FAILS": apply_fails,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), "kuberay/overlays/gpu", "serving"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    applied = [
        list(yaml.safe_load_all(p.read_text()))
        for p in sorted(tmp_path.glob("calls.log.applied.*"), key=lambda p: int(p.suffix[1:]))
    ]
    return proc, log.read_text().splitlines(), applied


def test_publishes_then_points_workers_then_applies_the_rayservice(tmp_path: Path) -> None:
    proc, calls, applied = run(tmp_path, "Complete")
    assert proc.returncode == 0, proc.stderr
    assert [c.split(" -f ")[0] for c in calls] == [
        "kubectl kustomize kuberay/overlays/gpu",
        "kubectl delete job serve-app-populate-models -n serving --ignore-not-found --wait=true",
        APPLY,
        GET_JOB, GET_JOB, GET_JOB,  # not done, not done, Complete
        "kubectl get configmap serve-app-models -n serving -o yaml",
        APPLY,
        "serve-app k8s apply -n serving",
        "serve-app k8s wait serve-app -n serving --timeout-s 1800",
    ]  # fmt: skip
    # Step 1 sends neither the RayService nor what the workers wait for.
    assert [(d["kind"], d["metadata"]["name"]) for d in applied[0]] == [
        ("ConfigMap", "serve-app-publish"), ("Job", "serve-app-populate-models"),
    ]  # fmt: skip
    assert applied[1] == [DOCS[0]]  # serve-app-models, after the Job completed
    assert "job/serve-app-populate-models complete after" in proc.stdout


def test_failed_job_changes_nothing_the_workers_read(tmp_path: Path) -> None:
    proc, calls, applied = run(tmp_path, "Failed", polls=0)
    assert proc.returncode == 1
    assert proc.stderr == (
        "job/serve-app-populate-models failed; serve-app-models and the RayService were not "
        "changed. kubectl logs job/serve-app-populate-models\n"
    )
    assert not [c for c in calls if c.startswith("serve-app")]
    assert len(applied) == 1
    assert "serve-app-models" not in [d["metadata"]["name"] for d in applied[0]]


def test_refused_rayservice_rolls_the_workers_configmap_back(tmp_path: Path) -> None:
    proc, calls, applied = run(tmp_path, "Complete", apply_fails="error: Apply failed (409)")
    assert proc.returncode == 1
    assert proc.stderr == (
        "error: Apply failed (409)\nthe RayService apply failed; serve-app-models rolled back\n"
    )
    assert [c.split(" -f ")[0] for c in calls[-2:]] == ["serve-app k8s apply -n serving", APPLY]
    assert applied[-1] == [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "serve-app-models",
                     "labels": {"app.kubernetes.io/part-of": "serve-app"}},
        "data": {"MODELS": "minilm:1"},
    }]  # fmt: skip
    assert not [c for c in calls if c.startswith("serve-app k8s wait")]
