#!/usr/bin/env bash
# Roll a new model version out in the one safe order: the weights first, then the config.
#
#   kuberay/scripts/rollout-model-version.sh kuberay/overlays/gpu [namespace]
#
# After publishing nothing by hand: bump `version:` in configs/cluster-<overlay>.yaml,
# run `serve-app render-k8s`, then this script. `kubectl apply -k` would send the models
# ConfigMap, the populate Job and the RayService at once, and KubeRay would hand the new
# serveConfigV2 to Serve while the Job is still copying: every replica Serve restarts for
# the new version fails ("version N not found ... publish it before deploying a config
# that pins it") and the application goes DEPLOY_FAILED. So:
#   1. everything but the RayService: the claims, the ConfigMap naming the new version and
#      a fresh populate Job (its pod template is immutable: the old Job is deleted first);
#   2. wait for the Job: it publishes the new version atomically and verifies every
#      checksum; a failed Job stops here, with the old version still serving;
#   3. the RayService (`serve-app k8s apply`, server-side apply) and a wait until every
#      application is RUNNING on the new version.
# Every apply is server-side as field manager serve-app, like kuberay/README.md's deploy:
# one owner per field, so nothing here conflicts with the first deploy. A RayService
# first applied client-side (`kubectl apply -k`) is a 409 naming kubectl-client-side-apply:
# run once with FORCE_CONFLICTS=1 to take the fields over.
# Environment: PUBLISH_TIMEOUT_S (default 1800), SERVE_TIMEOUT_S (default 1800),
# FORCE_CONFLICTS (1: pass --force-conflicts to every apply).
set -euo pipefail

overlay=${1:?usage: rollout-model-version.sh <kustomize overlay dir> [namespace]}
ns=()
if [ -n "${2:-}" ]; then ns=(-n "$2"); fi
job=serve-app-populate-models
rayservice=serve-app
publish_timeout_s=${PUBLISH_TIMEOUT_S:-1800}
serve_timeout_s=${SERVE_TIMEOUT_S:-1800}
force=()
if [ "${FORCE_CONFLICTS:-0}" = 1 ]; then force=(--force-conflicts); fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kubectl kustomize "$overlay" > "$work/all.yaml"
python3 - "$work/all.yaml" "$work/rest.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rest = [d for d in docs if d.get("kind") != "RayService"]
if len(rest) == len(docs):
    sys.exit(f"{sys.argv[1]}: no RayService in the overlay")
yaml.safe_dump_all(rest, open(sys.argv[2], "w"), sort_keys=False)
PY

echo "1/3 publishing: models ConfigMap and a fresh populate Job"
kubectl delete job "$job" "${ns[@]}" --ignore-not-found --wait=true
kubectl apply --server-side --field-manager=serve-app "${force[@]}" "${ns[@]}" -f "$work/rest.yaml"

echo "2/3 waiting for job/$job (up to ${publish_timeout_s} s)"
start=$SECONDS
while :; do
  conditions=$(kubectl get job "$job" "${ns[@]}" \
    -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
  case " $conditions " in
    *" Complete "*) echo "job/$job complete after $((SECONDS - start)) s"; break ;;
    *" Failed "*)
      echo "job/$job failed; the RayService was not changed. kubectl logs job/$job" >&2
      exit 1 ;;
  esac
  if [ $((SECONDS - start)) -ge "$publish_timeout_s" ]; then
    echo "job/$job not complete after ${publish_timeout_s} s; the RayService was not changed" >&2
    exit 1
  fi
  sleep "${POLL_S:-5}"
done

echo "3/3 applying the RayService and waiting for it to serve the new version"
serve-app k8s apply "${force[@]}" "${ns[@]}" -f "$work/all.yaml"
serve-app k8s wait "$rayservice" "${ns[@]}" --timeout-s "$serve_timeout_s"
