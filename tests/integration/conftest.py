"""One local Ray + Serve per pytest session, serving a real config with real MiniLM.

The session config holds the demo models plus a model with a corrupted weight file and
a model with five 0.25-GPU replicas on a Ray that has one logical GPU. Each test module
lists the applications it uses (``SESSION_APPS``); they are deployed when the module
starts, a few replicas at a time, and waited for by their progress (``STALL_S`` without
any replica changing state fails, naming what was still starting and why).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig, ModelConfig, load_app_config
from serve_app.deploy.serve_config import render_serve_config
from serve_app.local.demo import MLP_HEAD, ensure_demo_models

ROOT = Path(__file__).resolve().parents[2]
BROKEN = "broken"
GPU_MODEL = "gpu-mlp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GRPC_PORT = free_port()
"""The session's gRPC ingress port (``grpc.enabled`` in the session config)."""
STAGED = "minilm-pp"
OVERLOADED = "overloaded"
HEAD_MODELS = ["ticket-topic", "ticket-urgency", "ticket-topic-large"]
MISTYPED = "mistyped"
INLINE = "urgency-inline"
"""A pipeline with ``router: host`` (its one model, ticket-urgency, runs in its router)."""
TENANTS = "tenants"
"""A multiplexed family (tests/integration/test_multiplexing.py): tenant-0000..0003 in the
repository, tenant-0003 corrupt, two tenants per replica."""
TENANT_COUNT = 4
BROKER_ENV = "SERVE_APP_TEST_BROKER_URL"
"""Where the session's embedded Redis URL is (set before Ray starts)."""


def session_pipelines() -> list[dict[str, Any]]:
    """The demo's triage pipeline plus small graphs that exercise each node kind."""
    triage = load_app_config(ROOT / "configs/app.yaml").pipeline("triage")
    embed = {"name": "embed", "model": "minilm", "inputs": {"text": "request.text"}}
    return [
        triage.model_dump(mode="json"),
        {  # sequence with an explicit tensor mapping
            "name": "chain",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "nodes": [
                embed,
                {"name": "head", "model": MLP_HEAD, "inputs": {"input": "embed.embedding"}},
            ],
            "outputs": {"scores": "head.output", "embedding": "embed.embedding"},
        },
        {  # an optional node whose failure degrades the answer
            "name": "with-note",
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [-1]},
                {"name": "note", "datatype": "BYTES", "shape": [-1]},
            ],
            "nodes": [
                embed,
                {
                    "name": "note-embed",
                    "model": "minilm",
                    "inputs": {"text": "request.note"},
                    "optional": True,
                },
                {
                    "name": "both",
                    "kind": "combine",
                    "mode": "dict",
                    "inputs": {
                        "text_embedding": "embed.embedding",
                        "note_embedding": "note-embed.embedding",
                    },
                },
            ],
            "outputs": {
                "text_embedding": "both.text_embedding",
                "note_embedding": "both.note_embedding",
            },
        },
        {  # a staged (pipeline-parallel) model as a node
            "name": "pp-head",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "nodes": [
                {"name": "embed", "model": STAGED, "inputs": {"text": "request.text"}},
                {"name": "head", "model": MLP_HEAD, "inputs": {"input": "embed.embedding"}},
            ],
            "outputs": {"scores": "head.output"},
        },
        {  # a required node whose model never starts (corrupt weights)
            "name": "needs-broken",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "nodes": [
                embed,
                {"name": "head", "model": BROKEN, "inputs": {"input": "embed.embedding"}},
            ],
            "outputs": {"scores": "head.output"},
        },
        {  # router: host: the route's replicas load the model and run the graph in-process
            "name": INLINE,
            "router": "host",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 384]}],
            "nodes": [
                {"name": "urgency", "model": "ticket-urgency", "inputs": {"input": "request.input"}}
            ],
            "outputs": {"label": "urgency.label", "confidence": "urgency.confidence"},
        },  # fmt: skip
        {  # structurally fine, but BYTES into an FP32 input: its router must refuse to start
            "name": MISTYPED,
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "nodes": [{"name": "head", "model": MLP_HEAD, "inputs": {"input": "request.text"}}],
            "outputs": {"scores": "head.output"},
        },
    ]


OVERLOADED_MODEL: dict[str, Any] = {
    # Tiny admission limits on eager MiniLM: a burst must get 503 + Retry-After, not 500.
    "name": OVERLOADED,
    "repository_name": "minilm",
    "version": 1,
    "batching": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
    "max_ongoing_requests": 1,
    "max_queued_requests": 1,
    "resources": {"num_cpus": 0.1},
}


def binary_request(texts: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A BYTES ``text`` input in the binary tensor extension, asking for binary outputs:
    the body and its headers."""
    import struct

    import orjson

    buf = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(texts)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(buf)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + buf, headers


def send_burst(
    base_url: str, path: str, payload: dict[str, Any], n: int = 24, timeout_s: float = 60
) -> list[tuple[int, str | None]]:
    """``n`` concurrent POSTs of ``payload``: (status, Retry-After) of each."""
    from concurrent.futures import ThreadPoolExecutor

    def send(_: int) -> tuple[int, str | None]:
        with httpx.Client(base_url=base_url, timeout=timeout_s) as c:
            r = c.post(path, json=payload)
            return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(send, range(n)))


def make_app_config(root: Path, port: int, mlp_batching: dict[str, Any] | None = None) -> AppConfig:
    """The session's AppConfig; ``mlp_batching`` varies only the user_config."""
    return AppConfig.model_validate(
        {
            "repository": {"root": str(root)},
            # Access log on, as JSON: test_logs.py follows one request id through a graph.
            "http": {
                "host": "127.0.0.1",
                "port": port,
                "max_request_bytes": 1024 * 1024,
                "access_log": True,
            },
            "logging": {"encoding": "JSON"},
            # KServe v2 gRPC next to HTTP (tests/integration/test_grpc.py).
            "grpc": {"enabled": True, "port": GRPC_PORT},
            "models": [
                {
                    "name": "minilm",
                    "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.05},
                    "max_ongoing_requests": 64,
                    "resources": {"num_cpus": 1, "torch_threads": 1},
                },
                {
                    "name": MLP_HEAD,
                    "batching": mlp_batching or {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
                    "resources": {"num_cpus": 0.5},
                },
                {"name": BROKEN, "resources": {"num_cpus": 0.1}},
                ModelConfig(
                    name=GPU_MODEL,
                    num_replicas=5,
                    resources={"num_cpus": 0, "num_gpus": 0.25},
                    health_check_period_s=60,
                ).model_dump(),
                *({"name": h, "resources": {"num_cpus": 0}} for h in HEAD_MODELS),
                OVERLOADED_MODEL,
                {
                    "name": TENANTS,
                    "multiplex": {"tenant_prefix": "tenant-", "max_models_per_replica": 2},
                    "resources": {"num_cpus": 0},
                },
                {  # MiniLM v1 split 3/3 over two deployments
                    "name": STAGED,
                    "repository_name": "minilm",
                    "version": 1,
                    "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.005},
                    "stages": [
                        {"layers": [0, 3], "resources": {"num_cpus": 0.5}},
                        {"layers": [3, 6], "resources": {"num_cpus": 0.5}},
                    ],
                },
            ],
            "pipelines": session_pipelines(),
            # tests/integration/test_jobs.py: short delays so a test sees consumers wake,
            # redeliver and go back to zero within seconds.
            "jobs": {
                # needs-broken answers 503 (its required model never starts): its jobs
                # are retried, then dead-lettered.
                "targets": ["minilm", "chain", "needs-broken"],
                "broker_url_env": BROKER_ENV,
                "max_retries": 1,
                "redelivery_after_s": 4,
                "job_timeout_s": 30,
                "consumer_concurrency": 8,
                "consumers": {
                    "max_replicas": 2,
                    "target_jobs_per_consumer": 8,
                    "poll_interval_s": 0.5,
                    "upscale_delay_s": 0,
                    "downscale_delay_s": 4,
                },
            },
        }
    )


READY_APPS = [
    "oip",
    "minilm",
    MLP_HEAD,
    *HEAD_MODELS,
    STAGED,
    "triage",
    "chain",
    "with-note",
    "pp-head",
    "needs-broken",
    INLINE,
    OVERLOADED,
    TENANTS,
    "jobs-minilm",
    "jobs-chain",
    "jobs-needs-broken",
]
"""Applications a test may rely on (broken, gpu-mlp and mistyped never all become RUNNING)."""
EXPECTED_STATES = {BROKEN: "DEPLOY_FAILED", MISTYPED: "DEPLOY_FAILED", GPU_MODEL: "DEPLOYING"}
"""Where the applications that never run settle. gpu-mlp stays DEPLOYING (its fifth
0.25-GPU replica pends); the test that counts its replicas follows them itself."""
ALL_APPS = [*READY_APPS, *EXPECTED_STATES]
STALL_S = 240.0
"""A deploy that shows no replica changing state for this long is stuck, not slow."""
WAVE_REPLICAS = 4
"""At most this many new replicas start at once: each imports torch or onnxruntime and
loads weights, ~1 s of CPU and ~200 MiB at best; sixteen at once on two slow cores left
MiniLM starting for minutes."""


def replicas_of(app: dict[str, Any]) -> int:
    """Replicas an application of a rendered Serve config starts with."""
    total = 0
    for d in app["deployments"]:
        scaling = d.get("autoscaling_config") or {}
        total += int(
            d.get("num_replicas")
            or scaling.get("initial_replicas")
            or scaling.get("min_replicas")
            or 1
        )
    return total


def waves(apps: list[dict[str, Any]], max_replicas: int = WAVE_REPLICAS) -> list[list[str]]:
    """``apps`` (rendered, in order) cut into groups of at most ``max_replicas`` new
    replicas each (an app larger than that is a group alone)."""
    out: list[list[str]] = []
    count = max_replicas
    for a in apps:
        n = replicas_of(a)
        if out and count + n <= max_replicas:
            out[-1].append(a["name"])
            count += n
        else:
            out.append([a["name"]])
            count = n
    return out


class SessionServe:
    """The session's Serve: one AppConfig, of which only the applications that the test
    modules asked for are deployed, the models first and a few replicas at a time.

    Each deploy sends the whole set deployed so far (Serve's config is declarative);
    applications whose config is unchanged keep their replicas."""

    def __init__(self, app: AppConfig, url: str, broker: Any = None) -> None:
        self.app = app
        self.url = url
        self.broker = broker
        """The session's embedded Redis (``serve_app.local.broker.EmbeddedRedis``)."""
        self.deployed: list[str] = []

    def closure(self, names: list[str]) -> set[str]:
        """``names`` with the server application, the models their pipelines call and
        the targets of the job consumers among them."""
        wanted = {self.app.server_name, *names}
        wanted |= {n.removeprefix("jobs-") for n in names if n.startswith("jobs-")}
        for p in self.app.pipelines:
            if p.name in wanted:
                wanted |= {str(n.model) for n in p.nodes if getattr(n, "model", None)}
        return wanted

    def require(self, names: list[str]) -> None:
        """Deploy what of ``names`` (and what they need) is not deployed yet, in waves
        (server and models before pipelines), each waited for by its progress."""
        config = render_serve_config(self.app)
        wanted = self.closure(names) - set(self.deployed)
        pipelines = {p.name for p in self.app.pipelines}
        new = [a for a in config["applications"] if a["name"] in wanted]
        for wave in [
            *waves([a for a in new if a["name"] not in pipelines]),
            *waves([a for a in new if a["name"] in pipelines]),
        ]:
            self.deployed += wave
            self._deploy(config, wave)

    def redeploy(self, app: AppConfig) -> None:
        """Apply a changed AppConfig to what is deployed (e.g. another user_config)."""
        self.app = app
        self._deploy(render_serve_config(app), list(self.deployed))

    def _deploy(self, config: dict[str, Any], wait_for: list[str]) -> None:
        from serve_app.deploy import progress
        from serve_app.local import cluster as local

        apps = [a for a in config["applications"] if a["name"] in self.deployed]
        local.deploy_config({**config, "applications": apps})
        progress.wait_apps(local.serve_snapshot, wait_for, stall_s=STALL_S, states=EXPECTED_STATES)


def copy_model(source: Path, target: Path) -> None:
    """Publish a copy of the model folder ``source`` as the model ``target.name``."""
    shutil.copytree(source, target)
    for manifest in target.glob("*/manifest.json"):
        manifest.write_text(
            manifest.read_text().replace(f'"name": "{source.name}"', f'"name": "{target.name}"')
        )


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model-repository")
    ensure_demo_models(root, progress=False)
    for name in (BROKEN, GPU_MODEL):
        copy_model(root / MLP_HEAD, root / name)
    weights = root / BROKEN / "1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    from serve_app.local.demo_tenants import publish_tenants

    publish_tenants(root, TENANT_COUNT)
    weights = root / "tenant-0003" / "1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return root


METRICS_PORT = free_port()
"""Where the session's Ray node exports Prometheus metrics (reported every 0.5 s)."""


@pytest.fixture(scope="session")
def session_serve(
    model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SessionServe]:
    """Start Ray (4 logical CPUs, 1 logical GPU, metrics on ``METRICS_PORT``) and the
    server application; modules deploy what they use through ``serve_app_url``."""
    from serve_app.local import cluster as local

    local.prepare_environment({"SERVE_APP_LOG_TO_DRIVER": "0"})
    from serve_app.local.broker import EmbeddedRedis

    # The jobs' broker, before Ray: the controller (autoscaling) and the replicas read
    # its URL from the environment they inherit.
    broker = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    os.environ[BROKER_ENV] = broker.start()
    port = free_port()
    app = make_app_config(model_root, port)
    # The demo's ingress (HAProxy by default), set before Ray starts.
    ingress_env = local.ingress_environment(app.http, app.server_name)
    os.environ.update(ingress_env)
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
        _system_config={"metrics_report_interval_ms": local.METRICS_REPORT_INTERVAL_MS},
    )
    try:
        session = SessionServe(app, f"http://127.0.0.1:{port}", broker)
        session.require([])
        yield session
    finally:
        local.stop_ray(timeout_s=20)
        broker.stop()
        os.environ.pop(BROKER_ENV, None)
        for key in ingress_env:  # later subprocess tests choose their own ingress
            os.environ.pop(key, None)


@pytest.fixture(scope="module")
def serve_app_url(session_serve: SessionServe, request: pytest.FixtureRequest) -> str:
    """The session's base URL, once the applications the module lists in
    ``SESSION_APPS`` (default: all of them) are deployed."""
    session_serve.require(list(getattr(request.module, "SESSION_APPS", ALL_APPS)))
    return session_serve.url


@pytest.fixture(scope="module")
def client(serve_app_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app_url, timeout=30) as c:
        yield c


def error_of(r: httpx.Response) -> tuple[int, str]:
    """``(status, message)`` of an error answer, after checking its body is exactly
    ``{"error", "request_id"}`` and the id is the ``x-request-id`` Serve answered with."""
    body = r.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["request_id"] == r.headers["x-request-id"], (body, dict(r.headers))
    return r.status_code, str(body["error"])
