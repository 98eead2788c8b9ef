"""Builder args: the slice of an ``AppConfig`` each Serve application receives in its
``args`` (what ``serve_app.app.build_app`` validates).

Deployment options (replicas, autoscaling, resources, batching) are not here: they live
in the Serve config's ``deployments`` section, so changing them updates replicas in
place (``user_config``) or restarts them without rebuilding the application.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from serve_app.config import AppConfig, HttpConfig, ModelConfig, RepositoryConfig, ResourcesConfig
from serve_app.config.pipeline import ServedPipelineConfig
from serve_app.deploy.version_policy import side_app_names
from serve_app.graph.nodes import ModelNode
from serve_app.graph.spec import PipelineConfig
from serve_app.graph.structure import fused_hosts, model_nodes, topological_order
from serve_app.jobs.settings import QueueSettings
from serve_app.schema_base import StrictModel

MODEL_DEPLOYMENT = "ModelDeployment"
"""Deployment of a model served whole (its app's ingress)."""
ROUTER_DEPLOYMENT = "PipelineRouter"
"""Ingress of a pipeline app and of a staged model's app."""
SERVER_DEPLOYMENT = "OIPServer"
MULTIPLEX_DEPLOYMENT = "MultiplexedDeployment"
"""Deployment of a multiplexed family of tenant models."""
CONSUMER_DEPLOYMENT = "JobConsumer"
"""Deployment of a job target's consumers (in application ``jobs-<target>``)."""


def consumer_app(target: str) -> str:
    """Application name of the job consumers of ``target``."""
    return f"jobs-{target}"


def job_queue(app: AppConfig, target: str) -> QueueSettings | None:
    """The queue ``target`` takes jobs on, or None when it takes none."""
    if app.jobs is None or target not in app.jobs.targets:
        return None
    return app.jobs.queue_settings(target)


def stage_deployment(index: int) -> str:
    """Deployment name of pipeline-parallel stage ``index`` in a staged model's app."""
    return f"Stage{index}"


def torch_threads(resources: ResourcesConfig) -> int:
    """Intra-op threads of a replica: configured, else its whole CPUs (at least 1)."""
    return resources.torch_threads or max(1, int(resources.num_cpus))


class CanaryArgs(StrictModel):
    """A model's canary as its stable replicas see it: in their ``user_config`` (key
    ``canary``), so starting, resizing or removing a canary restarts no replica."""

    app: str = Field(description="Serve application of the canary version.")
    version: int = Field(ge=1, description="Its version (reported as model_version).")
    percent: float = Field(gt=0, le=100, description="Share of unversioned requests, percent.")


class FusedNodeArgs(StrictModel):
    """A pipeline node fused into this model's replicas (``placement: fused``)."""

    pipeline: str = Field(description="Pipeline that declares the node.")
    node: str = Field(description="Node name.")
    host: str = Field(description="The pipeline's node this model serves (the host node).")
    model: str = Field(description="The fused node's model (metrics and messages).")
    folder: str = Field(description="Repository folder of its weights.")
    version: Literal["latest"] | int = Field(description="Its version policy.")
    runtime: Literal["auto", "torch"] = Field("auto", description="Its ModelConfig.runtime.")
    inputs: dict[str, str] = Field(description="Model input -> tensor reference.")


def fused_into(app: AppConfig, model: ModelConfig, only: str | None = None) -> list[FusedNodeArgs]:
    """Every pipeline node fused into ``model``'s replicas, each after what it reads: of
    pipeline ``only`` (a ``router: host`` pipeline's own replicas), else of every pipeline
    whose router calls the model's deployment."""
    wanted = [p for p in app.pipelines if p.name == only or (only is None and p.router != "host")]
    out = []
    for p in wanted:
        hosts = fused_hosts(p)
        for name in topological_order(p):
            node = p.node(name)
            if name not in hosts or not isinstance(node, ModelNode):
                continue
            host = p.node(hosts[name])
            if not isinstance(host, ModelNode) or host.model != model.name:
                continue
            fused_model = app.model(node.model)
            out.append(
                FusedNodeArgs(
                    pipeline=p.name,
                    node=name,
                    host=host.name,
                    model=fused_model.name,
                    folder=fused_model.folder,
                    version=fused_model.version,
                    runtime=fused_model.runtime,
                    inputs=node.inputs,
                )
            )
    return out


class ModelAppArgs(StrictModel):
    """Args of a model replica (a whole model, or one stage of a staged model)."""

    kind: Literal["model"] = "model"
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    name: str = Field(description="Model name (route and messages).")
    folder: str | None = Field(None, description="Repository folder; None: the name.")
    version: Literal["latest"] | int = Field("latest", description="Version policy.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads in the replica.")
    runtime: Literal["auto", "torch"] = Field("auto", description="ModelConfig.runtime.")
    layers: tuple[int, int] | None = Field(
        None, description="Encoder layers of a pipeline-parallel stage; None: whole model."
    )
    hung_forward_s: float = Field(60.0, gt=0, description="Health fails past this forward.")
    served_versions: list[int] | None = Field(
        None,
        description=(
            "Every version of this model served side by side (one application each), "
            "listed in metadata and 404s; None: only this one. Filled when pinned."
        ),
    )
    latest_n: int | None = Field(
        None, ge=1, description="version_policy.latest_n of the model (resolved when pinned)."
    )
    slot: int = Field(
        0, ge=0, description="Under latest_n: 0 serves the newest version, 1 the one before..."
    )
    fused: list[FusedNodeArgs] = Field(
        default_factory=list,
        description="Pipeline nodes fused into this model's replicas (loaded with it).",
    )
    jobs: QueueSettings | None = Field(
        None, description="Where a Prefer: respond-async request is queued; None: not taken."
    )

    @classmethod
    def from_config(cls, app: AppConfig, model: ModelConfig) -> ModelAppArgs:
        """Slice of ``app`` that a model replica needs."""
        return cls(
            repository=app.repository,
            http=app.http,
            name=model.name,
            folder=model.repository_name,
            version=model.version,
            torch_threads=torch_threads(model.resources),
            runtime=model.runtime,
            hung_forward_s=model.hung_forward_s,
            fused=fused_into(app, model),
            jobs=job_queue(app, model.name),
        )

    @property
    def repository_folder(self) -> str:
        """Folder of the weights in the repository."""
        return self.folder or self.name


class MultiplexAppArgs(StrictModel):
    """Args of a multiplexed family's replicas (``ModelConfig.multiplex``)."""

    kind: Literal["multiplexed"] = "multiplexed"
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    name: str = Field(description="Family name (its route /v2/models/<name>).")
    tenant_prefix: str = Field(description="Repository folders starting with this are tenants.")
    max_models_per_replica: int = Field(ge=1, description="Tenants kept loaded per replica.")
    version: Literal["latest"] | int = Field("latest", description="Version policy per tenant.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads in the replica.")

    @classmethod
    def from_config(cls, app: AppConfig, model: ModelConfig) -> MultiplexAppArgs:
        """Slice of ``app`` that a family's replica needs."""
        assert model.multiplex is not None
        return cls(
            repository=app.repository,
            http=app.http,
            name=model.name,
            tenant_prefix=model.multiplex.tenant_prefix,
            max_models_per_replica=model.multiplex.max_models_per_replica,
            version=model.version,
            torch_threads=torch_threads(model.resources),
        )


class StagedAppArgs(StrictModel):
    """Args of a staged model's app: a router chaining one deployment per stage."""

    kind: Literal["staged"] = "staged"
    model: ModelAppArgs = Field(description="The whole model's args (stages copy them).")
    stages: list[tuple[int, int]] = Field(min_length=2, description="Layer range per stage.")
    stage_threads: list[int] = Field(description="torch threads per stage replica.")

    @classmethod
    def from_config(cls, app: AppConfig, model: ModelConfig) -> StagedAppArgs:
        """Slice of ``app`` that a staged model needs."""
        assert model.stages is not None
        return cls(
            model=ModelAppArgs.from_config(app, model),
            stages=[s.layers for s in model.stages],
            stage_threads=[torch_threads(s.resources) for s in model.stages],
        )

    def stage_args(self, index: int) -> ModelAppArgs:
        """Args of stage ``index``'s replicas."""
        return self.model.model_copy(
            update={
                "layers": self.stages[index],
                "torch_threads": self.stage_threads[index],
                "jobs": None,  # the staged app's router takes them
            }
        )


class NodeTarget(StrictModel):
    """Where a pipeline's model node sends its calls, and where its specs are read."""

    app: str | None = Field(
        description="Serve application of the model; None: only fused nodes use it here."
    )
    deployment: str = Field(description="Its ingress deployment (has ``infer_tensors``).")
    folder: str = Field(description="Repository folder of the weights.")
    version: Literal["latest"] | int = Field(description="Version policy of the model.")


class PipelineAppArgs(StrictModel):
    """Args of a pipeline's app (its router)."""

    kind: Literal["pipeline"] = "pipeline"
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    pipeline: PipelineConfig
    models: dict[str, NodeTarget] = Field(description="Model name -> where it is served.")
    handle_loop: Literal["separate", "same"] = Field(
        "separate", description="ServedPipelineConfig.handle_loop."
    )
    host: ModelAppArgs | None = Field(
        None,
        description=(
            "``router: host``: the host model's replica args (its fused nodes included), "
            "loaded in the router's own process and called in-process; None: the models "
            "are called through handles."
        ),
    )
    jobs: QueueSettings | None = Field(
        None, description="Where a Prefer: respond-async request is queued; None: not taken."
    )

    @classmethod
    def from_config(cls, app: AppConfig, pipeline: ServedPipelineConfig) -> PipelineAppArgs:
        """Slice of ``app`` that a pipeline router needs."""
        host = None
        if pipeline.router == "host":
            model = app.model(pipeline.host_model)
            host = ModelAppArgs.from_config(app, model).model_copy(
                update={"fused": fused_into(app, model, only=pipeline.name)}
            )
        targets = {}
        called = (
            set()  # the router runs them all in-process
            if pipeline.router == "host"
            else {n.model for n in pipeline.separate_nodes}
        )
        for node in model_nodes(pipeline):
            model = app.model(node.model)
            targets[model.name] = NodeTarget(
                app=model.app_name if model.name in called else None,
                deployment=ROUTER_DEPLOYMENT if model.stages else MODEL_DEPLOYMENT,
                folder=model.folder,
                version=model.version,
            )
        return cls(
            repository=app.repository,
            http=app.http,
            pipeline=pipeline,
            models=targets,
            handle_loop=pipeline.handle_loop,
            host=(None if host is None else host.model_copy(update={"jobs": None})),
            jobs=job_queue(app, pipeline.name),
        )


class ServerAppArgs(StrictModel):
    """Builder args of the server application (``/v2``, health, model list)."""

    kind: Literal["server"] = "server"
    http: HttpConfig = Field(default_factory=HttpConfig)
    repository: RepositoryConfig = Field(
        default_factory=RepositoryConfig,
        description="Where tenants' folders are listed (an unknown tenant is a 404 here).",
    )
    models: list[str] = Field(description="Names of the served models (their app names).")
    pipelines: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Pipeline name -> the model apps it needs (its readiness depends on them).",
    )
    families: dict[str, str] = Field(
        default_factory=dict,
        description="Multiplexed family (app name) -> tenant prefix: where tenants are forwarded.",
    )
    jobs: list[QueueSettings] = Field(
        default_factory=list,
        description="The queues whose jobs /v2/jobs answers for and whose depths it exports.",
    )
    jobs_poll_interval_s: float = Field(
        2.0, gt=0, description="How often the queues' depths are read for the metrics."
    )

    @classmethod
    def from_config(cls, app: AppConfig) -> ServerAppArgs:
        """Slice of ``app`` that the server needs."""
        return cls(
            http=app.http,
            repository=app.repository,
            models=[m.name for m in app.models if m.standalone],
            pipelines={
                p.name: (
                    []  # its router loads and runs its models itself
                    if p.router == "host"
                    else sorted({n.model for n in p.separate_nodes if not n.optional})
                )
                for p in app.pipelines
            },
            families={m.name: m.multiplex.tenant_prefix for m in app.models if m.multiplex},
            jobs=([app.jobs.queue_settings(t) for t in app.jobs.targets] if app.jobs else []),
            jobs_poll_interval_s=app.jobs.consumers.poll_interval_s if app.jobs else 2.0,
        )


class ServerUserConfig(StrictModel):
    """What the server applies without a restart (its deployment's ``user_config``)."""

    side_versions: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Model -> the applications of its other served versions (version_policy, "
            "canary): the model is ready when they are too."
        ),
    )

    @classmethod
    def from_config(cls, app: AppConfig) -> ServerUserConfig:
        """The server's ``user_config`` for ``app``."""
        return cls(
            side_versions={
                m.name: side_app_names(m) for m in app.models if m.version_policy or m.canary
            }
        )


class ConsumerAppArgs(StrictModel):
    """Args of one job target's consumers (application ``jobs-<target>``)."""

    kind: Literal["consumer"] = "consumer"
    queue: QueueSettings
    app: str = Field(description="The target's Serve application.")
    deployment: str = Field(description="Its ingress deployment (has ``answer_body``).")
    max_retries: int = Field(3, ge=0, description="JobsConfig.max_retries.")
    job_timeout_s: float = Field(120.0, gt=0, description="JobsConfig.job_timeout_s.")
    ready_timeout_s: float = Field(
        600.0, gt=0, description="How long a new consumer waits for its target to answer."
    )

    @classmethod
    def from_config(cls, app: AppConfig, target: str) -> ConsumerAppArgs:
        """The consumers of ``target`` (a job target of ``app``)."""
        assert app.jobs is not None
        models = {m.name: m for m in app.models}
        model = models.get(target)
        return cls(
            queue=app.jobs.queue_settings(target),
            app=model.app_name if model is not None else target,
            deployment=(
                MODEL_DEPLOYMENT if model is not None and not model.stages else ROUTER_DEPLOYMENT
            ),
            max_retries=app.jobs.max_retries,
            job_timeout_s=app.jobs.job_timeout_s,
        )


AppArgs = Annotated[
    ModelAppArgs
    | StagedAppArgs
    | MultiplexAppArgs
    | PipelineAppArgs
    | ServerAppArgs
    | ConsumerAppArgs,
    Field(discriminator="kind"),
]
APP_ARGS: TypeAdapter[AppArgs] = TypeAdapter(AppArgs)
"""Validates any application's ``args`` by its ``kind``."""
