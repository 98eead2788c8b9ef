"""``QueueSettings``: everything that touches one target's queue needs these (the
submitting replica, the consumer, the server's job routes, a producer of one's own)."""

from __future__ import annotations

from pydantic import Field

from serve_app.jobs.broker import (
    JobPublisher,
    QueueNames,
    is_redis,
    redis_client,
    resolve_url,
)
from serve_app.jobs.store import JobStore
from serve_app.schema_base import StrictModel


class QueueSettings(StrictModel):
    """Where one target's jobs are queued and recorded (URLs by environment variable)."""

    target: str = Field(description="The model or pipeline the queue feeds.")
    broker_url_env: str = Field(description="Environment variable holding the broker URL.")
    results_url_env: str | None = Field(
        None, description="Environment variable holding the records' Redis URL; None: the broker's."
    )
    prefix: str = Field("serve-app", description="Queue name prefix.")
    result_ttl_s: int = Field(86400, ge=1, description="Record lifetime after its last change.")
    redelivery_after_s: int = Field(
        300, ge=1, description="Unacknowledged jobs return to the queue after this (Redis)."
    )

    @property
    def queues(self) -> QueueNames:
        """The target's job, failed and unprocessable queues."""
        return QueueNames.of(self.prefix, self.target)

    def broker_url(self) -> str:
        """The broker URL from the environment (BrokerUnavailable when unset)."""
        return resolve_url(self.broker_url_env)

    def results_url(self) -> str:
        """The records' Redis URL from the environment."""
        if self.results_url_env is not None:
            return resolve_url(self.results_url_env, "job record store")
        url = self.broker_url()
        if not is_redis(url):
            raise ValueError(
                f"the broker in {self.broker_url_env} is not Redis, so the job records need "
                "their own Redis: set jobs.results_url_env"
            )
        return url

    def store(self) -> JobStore:
        """A record store client (connects lazily)."""
        return JobStore(redis_client(self.results_url()), self.result_ttl_s, self.prefix)

    def publisher(self, retry_after_s: int = 1) -> JobPublisher:
        """A publisher onto this target's queue, recording into ``store()``."""
        return JobPublisher(self.broker_url(), self.store(), self.redelivery_after_s, retry_after_s)
