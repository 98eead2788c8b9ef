"""What one served model is configured with: batching, autoscaling, resources, stages
and the model itself (``ModelConfig``). Part of ``AppConfig`` (``serve_app.config``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from serve_app.config.lifecycle import CanaryConfig, MultiplexConfig, VersionPolicy
from serve_app.schema_base import StrictModel, model_route_prefix, validate_model_name


class BatchingConfig(StrictModel):
    """Dynamic batching; applied through ``user_config`` so it changes without a restart."""

    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Most requests (items) merged into one batch."
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=10, description="Longest wait for a batch to fill after its first item."
    )
    max_concurrent_batches: int = Field(
        1, ge=1, le=64, description="Batches a replica may compute at the same time."
    )
    split_min_rows: int | None = Field(
        4,
        ge=1,
        description=(
            "CPU replicas with max_concurrent_batches > 1: a batch that finds several "
            "forward threads idle is cut into equal chunks of at least this many items, "
            "computed at once (data parallel, each with the replica's torch_threads); "
            "under load batches stay whole. None never cuts. GPU replicas never cut."
        ),
    )
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description=(
            "Length-aware batching for text models: items are sorted by token length and "
            "split into forwards whose padded size (items x longest) stays under this. "
            "None runs the whole batch as one forward."
        ),
    )
    cap_batch_to_memory: bool = Field(
        True,
        description="Probe the memory one batch item costs at start-up and cap max_batch_size.",
    )


class AutoscalingConfig(StrictModel):
    """Serve ``autoscaling_config``: replicas follow ongoing requests."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time.")
    max_replicas: int = Field(4, ge=1, description="Upper bound on replicas.")
    target_ongoing_requests: float = Field(
        16, gt=0, description="Ongoing (running + queued) requests per replica to aim for."
    )
    upscale_delay_s: float = Field(5.0, ge=0, description="Sustained demand before scaling up.")
    downscale_delay_s: float = Field(
        60.0, ge=0, description="Sustained idleness before scaling down."
    )
    look_back_period_s: float = Field(10.0, gt=0, description="Window the metric is averaged over.")
    metrics_interval_s: float = Field(2.0, gt=0, description="How often replicas report metrics.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie within [min_replicas, max_replicas]")
        return self

    def to_serve(self) -> dict[str, Any]:
        """Return the dict Serve expects under ``autoscaling_config``."""
        return self.model_dump(exclude_none=True)


class ResourcesConfig(StrictModel):
    """Per-replica resources (``ray_actor_options``) and thread settings."""

    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs reserved per replica.")
    num_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs per replica; fractions (0.25, 0.5) pack replicas onto one GPU.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description=(
            "torch intra-op threads in the replica. Ray sets OMP_NUM_THREADS=1 in workers; "
            "None uses max(1, num_cpus)."
        ),
    )

    @field_validator("num_gpus")
    @classmethod
    def _gpu_fraction(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("num_gpus above 1 must be a whole number")
        return v

    def to_ray_actor_options(self) -> dict[str, Any]:
        """Return Serve's ``ray_actor_options``."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


class StageConfig(StrictModel):
    """One pipeline-parallel stage of a model: a range of encoder layers in its own
    deployment, loading only its own tensors, with its own resources and replicas."""

    layers: tuple[int, int] = Field(
        description="Encoder layers [start, end) of this stage (start 0 adds the embeddings)."
    )
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is not set.")
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscaling of this stage.")
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="CPUs/GPUs of one replica of this stage."
    )

    @field_validator("layers")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] < v[1]:
            raise ValueError(f"stage layers must be [start, end) with 0 <= start < end, got {v}")
        return v


class ModelConfig(StrictModel):
    """One served model: a Serve application whose deployment answers its own OIP routes."""

    name: str = Field(description="Model name: URL path segment (and repository folder).")
    repository_name: str | None = Field(
        None,
        description=(
            "Folder in the repository when it differs from ``name`` (e.g. the same weights "
            "served whole and as stages)."
        ),
    )
    stages: list[StageConfig] | None = Field(
        None,
        min_length=2,
        description=(
            "Pipeline parallelism: split a Hugging Face encoder (one safetensors file) into "
            "consecutive layer ranges, each its own deployment; the model's route chains "
            "them. None serves the model whole in one deployment."
        ),
    )
    multiplex: MultiplexConfig | None = Field(
        None,
        description=(
            "Serve a family of tenant models (repository folders with a common prefix) "
            "from one deployment with a per-replica LRU; ``version`` then applies to each "
            "tenant. None serves the one model ``name`` (or ``repository_name``)."
        ),
    )
    version: Literal["latest"] | int = Field(
        "latest", description="Version policy: 'latest' (highest integer) or a pinned version."
    )
    version_policy: VersionPolicy | None = Field(
        None,
        description=(
            "Serve several versions side by side (then leave ``version`` at 'latest'); "
            "None serves the one version ``version`` selects."
        ),
    )
    canary: CanaryConfig | None = Field(
        None,
        description=(
            "Send a share of requests to a newer version (needs a pinned ``version``); "
            "None: every request goes to ``version``."
        ),
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    num_replicas: int = Field(
        1, ge=1, description="Fixed replica count, used when autoscaling is not set."
    )
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Autoscale on ongoing requests; overrides num_replicas."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a replica accepts at once (running + batching)."
    )
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="Requests queued per caller beyond that before 503 (-1: unbounded).",
    )
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    runtime: Literal["auto", "torch"] = Field(
        "auto",
        description=(
            "What runs a declared-architecture safetensors model. auto: numpy on a CPU "
            "replica for architectures numpy implements (mlp), so the replica never imports "
            "torch (about 1 s and 200 MiB per process), torch otherwise; torch: always torch."
        ),
    )
    standalone: bool = Field(
        True,
        description=(
            "False: the model gets no deployment, process or route of its own; it runs "
            "only inside pipeline replicas: fused into a host (``placement: fused``) or as "
            "the host of a ``router: host`` pipeline. Its weights are still resolved and "
            "sha256-verified from the repository by each replica that loads it."
        ),
    )
    health_check_period_s: float = Field(10.0, gt=0, description="Serve health-check period.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="Serve health-check timeout.")
    graceful_shutdown_timeout_s: float = Field(
        20.0, ge=0, description="Time a stopping replica gets to finish its requests."
    )
    hung_forward_s: float = Field(
        60.0,
        gt=0,
        description=(
            "A forward running longer than this fails the replica's health check, so Serve "
            "replaces a replica stuck in its model (after its failed-check threshold)."
        ),
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return validate_model_name(v)

    @field_validator("version")
    @classmethod
    def _positive_version(cls, v: Literal["latest"] | int) -> Literal["latest"] | int:
        if v != "latest" and int(v) < 1:
            raise ValueError("version must be 'latest' or an integer >= 1")
        return v

    @field_validator("repository_name")
    @classmethod
    def _check_repository_name(cls, v: str | None) -> str | None:
        return None if v is None else validate_model_name(v)

    @field_validator("stages")
    @classmethod
    def _consecutive(cls, v: list[StageConfig] | None) -> list[StageConfig] | None:
        if v is None:
            return v
        if v[0].layers[0] != 0:
            raise ValueError(f"the first stage must start at layer 0, got {list(v[0].layers)}")
        for a, b in zip(v, v[1:], strict=False):
            if a.layers[1] != b.layers[0]:
                raise ValueError(
                    f"stages must be consecutive: {list(a.layers)} then {list(b.layers)}"
                )
        return v

    @model_validator(mode="after")
    def _multiplex_alone(self) -> ModelConfig:
        if self.multiplex is None:
            return self
        if self.stages or self.repository_name:
            raise ValueError(
                f"model {self.name!r}: a multiplexed family cannot also have stages or a "
                "repository_name (its tenants are the folders starting with tenant_prefix)"
            )
        if self.name.startswith(self.multiplex.tenant_prefix):
            raise ValueError(
                f"model {self.name!r}: the family's name must not start with its "
                f"tenant_prefix {self.multiplex.tenant_prefix!r}"
            )
        return self

    @model_validator(mode="after")
    def _canary_beside_a_pinned_version(self) -> ModelConfig:
        if self.canary is None:
            return self
        if self.version == "latest" or self.version == self.canary.version:
            raise ValueError(
                f"model {self.name!r}: a canary (version {self.canary.version}) needs the "
                f"stable version pinned to another number (version: {self.version!r})"
            )
        if self.stages or self.multiplex or self.version_policy:
            raise ValueError(
                f"model {self.name!r}: a canary applies to a whole model with one version, "
                "not to stages, a multiplexed family or a version_policy"
            )
        return self

    @model_validator(mode="after")
    def _version_policy_alone(self) -> ModelConfig:
        if self.version_policy is None:
            return self
        if self.version != "latest":
            raise ValueError(
                f"model {self.name!r}: set either version ({self.version}) or "
                "version_policy, not both"
            )
        if self.stages or self.multiplex:
            raise ValueError(
                f"model {self.name!r}: version_policy applies to a whole model, not to "
                "stages or a multiplexed family"
            )
        return self

    @property
    def folder(self) -> str:
        """The model's folder in the repository."""
        return self.repository_name or self.name

    @model_validator(mode="after")
    def _batch_fits_ongoing(self) -> ModelConfig:
        b = self.batching
        needed = b.max_batch_size * b.max_concurrent_batches
        if needed > self.max_ongoing_requests:
            raise ValueError(
                f"model {self.name!r}: max_batch_size ({b.max_batch_size}) x "
                f"max_concurrent_batches ({b.max_concurrent_batches}) = {needed} exceeds "
                f"max_ongoing_requests ({self.max_ongoing_requests}); batches could never fill"
            )
        return self

    @property
    def app_name(self) -> str:
        """Serve application name of this model."""
        return self.name

    @property
    def route_prefix(self) -> str:
        """Route prefix: the model's deployment answers its own OIP routes (one hop)."""
        return model_route_prefix(self.name)
