#!/usr/bin/env bash
# Roll a new model version out in the one safe order: the weights first, then the config.
#
#   kuberay/scripts/rollout-model-version.sh kuberay/overlays/gpu [namespace]
#
# After publishing nothing by hand: bump `version:` in configs/cluster-<overlay>.yaml,
# build and push a seed image holding the new version under
# <cluster.model_sources>/<name>/<version>, run `serve-app render-k8s`, then this script.
# `kubectl apply -k` would send the ConfigMaps, the populate Job and the RayService at
# once, and KubeRay would hand the new serveConfigV2 to Serve while the Job is still
# copying: every replica Serve restarts for the new version fails ("version N not found
# ... publish it before deploying a config that pins it") and the application goes
# DEPLOY_FAILED. So:
#   1. everything but the RayService and the workers' ConfigMap serve-app-models: the
#      claims, serve-app-publish (what the Job publishes) and a fresh populate Job (its
#      pod template is immutable: the old Job is deleted first);
#   2. wait for the Job: it publishes the new version atomically and verifies every
#      checksum; a failed Job stops here with nothing the workers read changed, so a
#      worker created meanwhile waits in wait-for-models only for what is published;
#   3. serve-app-models, now naming only published versions;
#   4. the RayService (`serve-app k8s apply`) and a wait until every application is
#      RUNNING on the new version. If the RayService apply fails (a 409, an invalid
#      spec), serve-app-models is put back as it was, matching what still serves.
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
python3 - "$work/all.yaml" "$work/rest.yaml" "$work/models.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
def is_models(d):
    return d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "serve-app-models"
rest = [d for d in docs if d.get("kind") != "RayService" and not is_models(d)]
models = [d for d in docs if is_models(d)]
if not any(d.get("kind") == "RayService" for d in docs) or len(models) != 1:
    sys.exit(f"{sys.argv[1]}: the overlay needs one RayService and one serve-app-models")
yaml.safe_dump_all(rest, open(sys.argv[2], "w"), sort_keys=False)
yaml.safe_dump_all(models, open(sys.argv[3], "w"), sort_keys=False)
PY
apply=(kubectl apply --server-side --field-manager=serve-app "${force[@]}" "${ns[@]}")

echo "1/4 publishing: serve-app-publish and a fresh populate Job (workers' ConfigMap untouched)"
kubectl delete job "$job" "${ns[@]}" --ignore-not-found --wait=true
"${apply[@]}" -f "$work/rest.yaml"

echo "2/4 waiting for job/$job (up to ${publish_timeout_s} s)"
start=$SECONDS
while :; do
  conditions=$(kubectl get job "$job" "${ns[@]}" \
    -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
  case " $conditions " in
    *" Complete "*) echo "job/$job complete after $((SECONDS - start)) s"; break ;;
    *" Failed "*)
      echo "job/$job failed; serve-app-models and the RayService were not changed." \
        "kubectl logs job/$job" >&2
      exit 1 ;;
  esac
  if [ $((SECONDS - start)) -ge "$publish_timeout_s" ]; then
    echo "job/$job not complete after ${publish_timeout_s} s; serve-app-models and the" \
      "RayService were not changed" >&2
    exit 1
  fi
  sleep "${POLL_S:-5}"
done

echo "3/4 serve-app-models: workers now wait only for published versions"
kubectl get configmap serve-app-models "${ns[@]}" -o yaml > "$work/models.before.yaml" \
  2>/dev/null || : > "$work/models.before.yaml"
"${apply[@]}" -f "$work/models.yaml"

echo "4/4 applying the RayService and waiting for it to serve the new version"
if ! serve-app k8s apply "${force[@]}" "${ns[@]}" -f "$work/all.yaml"; then
  if [ -s "$work/models.before.yaml" ]; then
    python3 - "$work/models.before.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
meta = doc["metadata"]  # an apply configuration, not an export
doc["metadata"] = {"name": meta["name"], "labels": meta.get("labels") or {}}
yaml.safe_dump(doc, open(sys.argv[1], "w"), sort_keys=False)
PY
    "${apply[@]}" -f "$work/models.before.yaml"
    echo "the RayService apply failed; serve-app-models rolled back" >&2
  fi
  exit 1
fi
serve-app k8s wait "$rayservice" "${ns[@]}" --timeout-s "$serve_timeout_s"
