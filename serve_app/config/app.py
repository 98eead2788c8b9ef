"""AppConfig: the one source of truth for what is served and how.

``configs/app.yaml`` holds an ``AppConfig``; ``serve-app render`` turns it into the
Serve config file (``configs/local.yaml``) and the RayService ``serveConfigV2``. Every
model is validated here, including the couplings Ray only warns about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from serve_app.config.cluster import ClusterConfig
from serve_app.config.grpc import GrpcConfig
from serve_app.config.jobs import JobsConfig
from serve_app.config.model import ModelConfig
from serve_app.config.pipeline import ServedPipelineConfig
from serve_app.config.tenants import check_tenant_prefixes
from serve_app.graph.nodes import ModelNode
from serve_app.graph.structure import fused_hosts, model_nodes
from serve_app.protocol.limits import RequestLimits
from serve_app.schema_base import StrictModel


class RepositoryConfig(StrictModel):
    """Where the versioned weights live (a ReadOnlyMany PVC in a cluster)."""

    root: str = Field(
        "./model-repository",
        description="Model repository root: /mnt/models in a cluster, a local folder on a laptop.",
    )
    hash_workers: int = Field(
        4, ge=1, le=64, description="Threads used to sha256 weight files in parallel."
    )


class HttpConfig(StrictModel):
    """HTTP ingress settings shared by every application."""

    host: str = Field("127.0.0.1", description="Bind address of the Serve HTTP ingress.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the Serve HTTP ingress.")
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest accepted request body (else 413)."
    )
    limits: RequestLimits = Field(
        default_factory=RequestLimits,
        description="What one inference request may declare (checked before decoding).",
    )
    request_timeout_s: float | None = Field(
        30.0, gt=0, description="End-to-end request timeout enforced by Serve (408 after)."
    )
    retry_after_s: int = Field(
        1, ge=1, description="Retry-After seconds sent with 503 when not ready or overloaded."
    )
    ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy",
        description=(
            "haproxy: Ray 2.60's HAProxy ingress straight to replicas (measured ~3x the "
            "Python proxy's requests/s, see loadtest/results); proxy: Serve's Python proxy."
        ),
    )
    admin_host: str | None = Field(
        "127.0.0.1",
        description=(
            "Bind address of HAProxy's stats/metrics listeners; None keeps Ray's "
            "all-interfaces default (inside a pod)."
        ),
    )
    admin_ports: tuple[int, int] = Field(
        (8404, 9101),
        description=(
            "HAProxy's stats and Prometheus ports on a local run (with admin_host set); "
            "two local Rays with HAProxy ingress on one machine need different ones."
        ),
    )
    access_log: bool = Field(
        False,
        description="Serve's per-request access log line (costs CPU on the request path).",
    )
    max_in_flight_bytes: int | None = Field(
        None,
        ge=1024,
        description=(
            "Per replica: bytes its requests may hold at once (bodies as they are read, "
            "then their decoded inputs); a request past it gets 503 with Retry-After. "
            "None: a quarter of the memory the replica may use when it starts (the "
            "container's limit, else the host's available memory), at least one "
            "request's worth (max_request_bytes + limits.max_decoded_bytes)."
        ),
    )
    haproxy_balance: Literal["leastconn", "tenant-header"] = Field(
        "leastconn",
        description=(
            "How HAProxy picks a replica, for every application. leastconn: Ray's default. "
            "tenant-header: hash of the serve_multiplexed_model_id header, so a tenant's "
            "requests on its family's route reach the replica that holds it (measured in "
            "loadtest/results/multiplex-haproxy-hdr); requests without the header are "
            "spread round-robin instead of by least connections."
        ),
    )

    @model_validator(mode="after")
    def _one_request_fits(self) -> HttpConfig:
        need = self.max_request_bytes + self.limits.max_decoded_bytes
        if self.max_in_flight_bytes is not None and self.max_in_flight_bytes < need:
            raise ValueError(
                f"http.max_in_flight_bytes {self.max_in_flight_bytes} is below one request's "
                f"worth ({need}: max_request_bytes + limits.max_decoded_bytes): the largest "
                "request would be refused 503 forever"
            )
        return self


class LogConfig(StrictModel):
    """How every replica logs (Serve's ``logging_config``)."""

    encoding: Literal["TEXT", "JSON"] = Field(
        "TEXT",
        description=(
            "TEXT for people at a terminal; JSON for a log pipeline: one object per line "
            "with Serve's request_id, application, deployment and replica, the same "
            "request_id on every graph node a request passes through."
        ),
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level written by replicas and Serve's components."
    )


class AppConfig(StrictModel):
    """Everything serve_app serves: the repository, the HTTP ingress and the models."""

    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    grpc: GrpcConfig = Field(
        default_factory=GrpcConfig,
        description="KServe v2 gRPC ingress (tritonclient.grpc), off by default.",
    )
    server_name: str = Field(
        "oip", description="Serve application name of the server routes (/v2, health, list)."
    )
    models: list[ModelConfig] = Field(min_length=1, description="The models to serve.")
    pipelines: list[ServedPipelineConfig] = Field(
        default_factory=list,
        description="Inference graphs over the models, each served at /v2/models/<name>.",
    )
    logging: LogConfig = Field(
        default_factory=LogConfig, description="Replica log format and level."
    )
    cluster: ClusterConfig | None = Field(
        None,
        description="Kubernetes only (serve-app render-k8s): the worker pod shape; "
        "None keeps the overlay's default.",
    )
    jobs: JobsConfig | None = Field(
        None,
        description="Inference jobs from a queue (Prefer: respond-async, /v2/jobs); None: off.",
    )

    @model_validator(mode="after")
    def _unique(self) -> AppConfig:
        names = [m.name for m in self.models] + [p.name for p in self.pipelines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model/pipeline names: {dupes}")
        if self.server_name in names:
            raise ValueError(f"server_name {self.server_name!r} clashes with a model name")
        return self

    @model_validator(mode="after")
    def _tenant_names(self) -> AppConfig:
        prefixes = {m.name: m.multiplex.tenant_prefix for m in self.models if m.multiplex}
        names = [m.name for m in self.models] + [p.name for p in self.pipelines]
        check_tenant_prefixes(prefixes, [*names, self.server_name], self.pipelines)
        return self

    @model_validator(mode="after")
    def _pipeline_models(self) -> AppConfig:
        models = {m.name: m for m in self.models}
        for p in self.pipelines:
            for node in model_nodes(p):
                model = models.get(node.model)
                if model is None:
                    raise ValueError(
                        f"pipeline {p.name!r} node {node.name!r}: unknown model {node.model!r} "
                        f"(models: {sorted(models)})"
                    )
                _check_placement(p, node, model, models)
                if node.version is not None and node.version != model.version:
                    raise ValueError(
                        f"pipeline {p.name!r} node {node.name!r}: wants {node.model!r} version "
                        f"{node.version!r}, but the model is served at version "
                        f"{model.version!r} (one deployment per model; serve another version "
                        "under its own name with repository_name)"
                    )
        return self

    @model_validator(mode="after")
    def _standalone_or_fused(self) -> AppConfig:
        for model in self.models:
            if model.standalone:
                continue
            uses = [(p, n) for p in self.pipelines for n in model_nodes(p) if n.model == model.name]
            # Fused, or the host a router: host pipeline loads itself: no handle calls it.
            called = [f"{p.name}/{n.name}" for p, n in uses if not n.fused and p.router != "host"]
            if not uses or called:
                raise ValueError(
                    f"model {model.name!r} has standalone: false, so it runs only inside "
                    "pipeline replicas (fused, or as the host of a router: host pipeline); "
                    + (
                        f"nodes {called} call it as a separate deployment"
                        if called
                        else "no pipeline runs it"
                    )
                )
        return self

    @model_validator(mode="after")
    def _job_targets(self) -> AppConfig:
        if self.jobs is None:
            return self
        models = {m.name: m for m in self.models}
        pipelines = {p.name for p in self.pipelines}
        for target in self.jobs.targets:
            model = models.get(target)
            if model is None and target not in pipelines:
                raise ValueError(
                    f"jobs target {target!r} is not a model or pipeline of this config "
                    f"(models and pipelines: {sorted([*models, *pipelines])})"
                )
            if model is not None and (model.multiplex or not model.standalone):
                why = "a multiplexed family" if model.multiplex else "standalone: false"
                raise ValueError(f"jobs target {target!r} is {why}; it has no route to call")
            if f"jobs-{target}" in models or f"jobs-{target}" in pipelines:
                raise ValueError(
                    f"jobs target {target!r}: its consumers' application jobs-{target} "
                    "clashes with a model or pipeline of that name"
                )
        return self

    def pipeline(self, name: str) -> ServedPipelineConfig:
        """Return the pipeline called ``name`` (``KeyError`` if absent)."""
        for p in self.pipelines:
            if p.name == name:
                return p
        raise KeyError(name)

    def model(self, name: str) -> ModelConfig:
        """Return the config of model ``name`` (``KeyError`` if absent)."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def _check_placement(
    pipeline: ServedPipelineConfig,
    node: ModelNode,
    model: ModelConfig,
    models: dict[str, ModelConfig],
) -> None:
    """A fused node's model and its host's model are plain models (one deployment that
    loads the whole model): a staged or multiplexed model cannot host or be fused."""
    if not node.fused:
        return
    host_node = pipeline.node(fused_hosts(pipeline)[node.name])
    host = models.get(host_node.model) if isinstance(host_node, ModelNode) else None
    for role, m in (("fused", model), ("host", host)):
        if m is not None and (m.stages or m.multiplex):
            raise ValueError(
                f"pipeline {pipeline.name!r} node {node.name!r}: {role} model {m.name!r} is "
                f"{'staged' if m.stages else 'multiplexed'}; fusing needs plain models "
                "(use placement: separate)"
            )


def load_app_config(path: str | Path) -> AppConfig:
    """Read and validate an ``AppConfig`` YAML file."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return AppConfig.model_validate(data)
