"""``QueueDepthPolicy``: job consumers scale on the jobs waiting in their queue plus the
jobs they hold, from zero.

Ray's ``AsyncInferenceAutoscalingPolicy`` reads the queue's length (one short poll
every ``poll_interval_s``, off the controller's loop) and adds HTTP load. Two changes:

- the broker URL comes from an environment variable of the controller's process (the
  Ray head), never from the Serve config that carries the policy's arguments;
- the jobs a consumer already took count too (``in_flight``, reported by each
  consumer through ``record_autoscaling_stats``). A queue drained into the consumers'
  hands is not idle work: without this the policy scales consumers down, to zero, while
  they are mid-job;
- on Redis, overdue unacknowledged messages count (a consumer that died holding jobs):
  only a running consumer puts them back on the queue, so with none left they would
  wait for the next job to wake one.

The result goes through Serve's usual bounds and delays (``min_replicas`` ..
``max_replicas``, ``upscale_delay_s``, ``downscale_delay_s``); from zero the first job
starts a consumer at once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray.serve.async_inference_autoscaling_policy import AsyncInferenceAutoscalingPolicy
from ray.serve.config import AutoscalingContext

from serve_app.jobs.broker import is_redis, overdue_unacked, redis_client

IN_FLIGHT_METRIC = "in_flight"
"""The custom autoscaling metric a consumer reports: jobs it holds."""

logger = logging.getLogger("ray.serve")


class QueueDepthPolicy(AsyncInferenceAutoscalingPolicy):
    """Desired consumers = (waiting + held jobs) / ``target_ongoing_requests``."""

    def __init__(
        self,
        broker_url_env: str,
        queue_name: str,
        poll_interval_s: float = 2.0,
        rabbitmq_management_url_env: str | None = None,
        redelivery_after_s: float | None = None,
    ) -> None:
        url = os.environ.get(broker_url_env, "")
        management = os.environ.get(rabbitmq_management_url_env or "", "") or None
        if not url:
            logger.error(
                "queue %s: %s is not set in the Serve controller's environment; its "
                "consumers scale on held jobs only",
                queue_name,
                broker_url_env,
            )
        super().__init__(url, queue_name, management, poll_interval_s)
        self._redelivery_after_s = redelivery_after_s
        self._overdue = 0
        self._redis: Any = None

    def _ensure_broker(self) -> None:
        if self._broker_url:
            super()._ensure_broker()

    async def _poll_once(self) -> None:
        if self._broker is None:
            return
        await super()._poll_once()
        if self._redelivery_after_s is None or not is_redis(self._broker_url):
            return
        try:
            if self._redis is None:
                # short: this runs on the controller's loop
                self._redis = redis_client(self._broker_url, timeout_s=1.0)
            self._overdue = overdue_unacked(self._redis, self._redelivery_after_s, self._queue_name)
        except Exception as e:
            logger.warning("queue %s: overdue messages unknown: %s", self._queue_name, e)

    def __call__(self, ctx: AutoscalingContext) -> tuple[int | float, dict[str, Any]]:
        _, state = super().__call__(ctx)  # starts a poll when one is due
        metrics = ctx.aggregated_metrics or {}
        held = sum(metrics.get(IN_FLIGHT_METRIC, {}).values())
        workload = self._queue_length + held + self._overdue + ctx.total_num_requests
        state = {**state, "queue_length": self._queue_length, "in_flight": held}
        state["overdue"] = self._overdue
        if ctx.current_num_replicas == 0:
            return (1 if workload > 0 else 0), state
        assert ctx.config is not None
        per_replica = ctx.config.get_target_ongoing_requests()
        return workload / per_replica, state
