"""``jobs``: inference jobs taken from a queue (``Prefer: respond-async`` or a producer
of one's own), consumed by Serve task consumers that scale on the queue's depth."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from serve_app.jobs.settings import QueueSettings
from serve_app.schema_base import StrictModel, validate_model_name


class ConsumerScaling(StrictModel):
    """How each target's consumers scale: on the messages waiting in its queue plus the
    jobs they hold, not on HTTP load."""

    min_replicas: int = Field(
        0, ge=0, description="Consumers kept when the queue is empty (0: none until a job)."
    )
    max_replicas: int = Field(4, ge=1, description="Upper bound on consumers per target.")
    target_jobs_per_consumer: float = Field(
        16, gt=0, description="Waiting plus running jobs per consumer to aim for."
    )
    poll_interval_s: float = Field(
        2.0, gt=0, description="How often the controller reads the queue's depth."
    )
    upscale_delay_s: float = Field(
        2.0, ge=0, description="Sustained backlog before adding consumers beyond the first."
    )
    downscale_delay_s: float = Field(
        30.0, ge=0, description="Sustained idleness before removing consumers (also to zero)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> ConsumerScaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self


class JobsConfig(StrictModel):
    """Inference jobs: which targets take them, where the broker is, how long answers
    are kept, how often a failing job is retried and how consumers scale."""

    targets: list[str] = Field(
        min_length=1,
        description="Models and pipelines that take jobs (each gets its own queue).",
    )
    broker_url_env: str = Field(
        "SERVE_APP_BROKER_URL",
        description=(
            "Environment variable holding the broker URL (redis:// or amqp://, with its "
            "password): never in this file. serve-app demo sets it for its embedded Redis; "
            "in a cluster it comes from a Secret."
        ),
    )
    results_url_env: str | None = Field(
        None,
        description=(
            "Environment variable holding the Redis URL of the job records; None: the "
            "broker's (which must then be Redis)."
        ),
    )
    rabbitmq_management_url_env: str | None = Field(
        None,
        description=(
            "RabbitMQ only: environment variable holding the management API URL "
            "(http://user:pass@host:15672/api/) the autoscaling policy reads queue depths "
            "from; None derives it from the broker URL."
        ),
    )
    queue_prefix: str = Field(
        "serve-app", description="Queue names are <prefix>.<target>[.failed|.unprocessable]."
    )
    max_retries: int = Field(
        3,
        ge=0,
        description=(
            "Retries of a job whose target was unavailable or overloaded (backing off 1, "
            "2, 4... s) before it lands in the failed queue."
        ),
    )
    result_ttl_s: int = Field(
        86400,
        ge=1,
        description="How long a job's record and answer are kept after its last change.",
    )
    redelivery_after_s: int = Field(
        300,
        ge=1,
        description=(
            "A job whose consumer died unacknowledged is delivered again this long after "
            "its delivery (Redis; RabbitMQ redelivers when the connection drops). Keep it "
            "above the longest job, or a slow job runs twice (answered once)."
        ),
    )
    job_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for the target's answer to one job (then retried)."
    )
    consumer_concurrency: int = Field(
        16, ge=1, le=256, description="Jobs one consumer works on at once (its threads)."
    )
    consumers: ConsumerScaling = Field(default_factory=ConsumerScaling)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        dupes = sorted({t for t in v if v.count(t) > 1})
        if dupes:
            raise ValueError(f"duplicate job targets: {dupes}")
        return [validate_model_name(t) for t in v]

    @field_validator("queue_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return validate_model_name(v)

    def queue_settings(self, target: str) -> QueueSettings:
        """How ``target``'s queue is reached (for its submitters and consumers)."""
        return QueueSettings(
            target=target,
            broker_url_env=self.broker_url_env,
            results_url_env=self.results_url_env,
            prefix=self.queue_prefix,
            result_ttl_s=self.result_ttl_s,
            redelivery_after_s=self.redelivery_after_s,
        )
