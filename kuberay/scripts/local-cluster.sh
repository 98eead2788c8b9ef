#!/usr/bin/env bash
# serve_app on a local one-node Kubernetes (kind or minikube), the dev overlay end to end:
#
#   kuberay/scripts/local-cluster.sh [--dry-run] [--driver kind|minikube] [--name NAME]
#                                    [--skip-build]
#
# Run it from the repository root. It creates the cluster, builds the two images for this
# machine's architecture, loads them into the node, installs the KubeRay operator 1.7.0
# with Helm, applies kuberay/overlays/dev server-side as field manager serve-app, waits for
# the populate Job and the RayService, then port-forwards the serve Service and curls it.
# --dry-run prints every command and runs none (the architecture is read with uname).
#
# Capacity (requests of the rendered dev overlay; tests/k8s/test_local_cluster_script.py
# recomputes them): head 1.5 CPU / 3.5 GiB (ray-head 1 / 3Gi, autoscaler sidecar 0.5 /
# 512Mi), one worker 2 CPU / 4 GiB, populate Job 0.5 CPU / 1 GiB while it runs, the KubeRay
# operator 0.1 CPU / 512Mi: 4.1 CPU / 9 GiB for one worker; the autoscaler may add a second
# worker (2 CPU / 4 GiB more). Add the node's own system pods: give Docker (Docker Desktop,
# colima) or minikube at least 6 CPUs and 12 GiB.
#
# Not run by this project: no Docker engine or cluster was available to its CI. CI runs
# this script against stand-in commands (printed and executed orders, arguments).
set -euo pipefail

driver=kind
name=serve-app
dry_run=0
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --driver) driver=${2:?--driver needs kind or minikube}; shift ;;
    --name) name=${2:?--name needs a value}; shift ;;
    --skip-build) build=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$driver" in
  kind) context="kind-$name" ;;
  minikube) context="$name" ;;
  *) echo "--driver must be kind or minikube, not $driver" >&2; exit 2 ;;
esac

kuberay_version=1.7.0
tag=${SERVE_APP_TAG:-0.1.0-ray2.60.0-py311}  # the dev overlay's newTag (tested)
overlay=kuberay/overlays/dev
timeout_s=${TIMEOUT_S:-1800}
local_port=${LOCAL_PORT:-8000}

# Ray publishes its aarch64 images under their own tags (rayproject/ray:<v>-py311-aarch64),
# not as one multi-arch image: build for the node's architecture, which is this machine's
# (kind and minikube run nodes natively; an amd64 image on an arm64 node fails with
# "exec format error").
case "$(uname -m)" in
  x86_64|amd64) platform=linux/amd64; variant="" ;;
  aarch64|arm64) platform=linux/arm64; variant=-aarch64 ;;
  *) echo "unsupported architecture $(uname -m)" >&2; exit 2 ;;
esac

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ "$dry_run" = 0 ]; then "$@"; fi
}

if [ "$dry_run" = 0 ]; then
  for tool in docker kubectl helm "$driver" serve-app curl; do
    command -v "$tool" > /dev/null || { echo "$tool not found on PATH" >&2; exit 2; }
  done
fi

echo "== cluster ($driver, context $context; needs 4.1 CPU / 9 GiB requested for one worker)"
if [ "$driver" = kind ]; then
  run kind create cluster --name "$name" --wait 120s
else
  run minikube start -p "$name" --cpus 6 --memory 12g
fi

echo "== images ($platform)"
if [ "$build" = 1 ]; then
  run docker build --platform "$platform" --build-arg "VARIANT=$variant" -t "serve-app:$tag" .
  run docker build --platform "$platform" --build-arg "VARIANT=$variant" --target seed \
    -t "serve-app-seed:$tag" .
fi
for image in "serve-app:$tag" "serve-app-seed:$tag"; do
  if [ "$driver" = kind ]; then
    run kind load docker-image "$image" --name "$name"
  else
    run minikube -p "$name" image load "$image"
  fi
done

echo "== KubeRay operator $kuberay_version (namespace kuberay-system, as the NetworkPolicy expects)"
run helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
run helm upgrade --install kuberay-operator kuberay/kuberay-operator \
  --version "$kuberay_version" --namespace kuberay-system --create-namespace \
  --kube-context "$context" --wait --timeout 10m

echo "== serve_app ($overlay)"
run kubectl --context "$context" apply --server-side --field-manager=serve-app -k "$overlay"
run kubectl --context "$context" wait --for=condition=complete \
  job/serve-app-populate-models --timeout "${timeout_s}s"
run serve-app k8s wait serve-app --context "$context" --timeout-s "$timeout_s"

echo "== request (port-forward svc/serve-app-serve-svc to 127.0.0.1:$local_port)"
printf '+ %s &\n' "kubectl --context $context port-forward svc/serve-app-serve-svc $local_port:8000"
if [ "$dry_run" = 0 ]; then
  kubectl --context "$context" port-forward svc/serve-app-serve-svc "$local_port:8000" \
    > /dev/null &
  forward=$!
  trap 'kill "$forward" 2> /dev/null || true' EXIT
fi
run curl -fsS --retry 10 --retry-delay 1 --retry-connrefused \
  "http://127.0.0.1:$local_port/v2/models"
echo
echo "done. Again: kubectl --context $context port-forward svc/serve-app-serve-svc $local_port:8000"
if [ "$driver" = kind ]; then
  echo "remove: kind delete cluster --name $name"
else
  echo "remove: minikube delete -p $name"
fi
