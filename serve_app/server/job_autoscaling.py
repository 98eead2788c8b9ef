"""``QueueDepthPolicy``: job consumers scale on the jobs waiting in their queue plus the
jobs they hold, from zero.

Ray's ``AsyncInferenceAutoscalingPolicy`` reads the queue's length (one short poll
every ``poll_interval_s``, off the controller's loop) and adds HTTP load. Two changes:

- the broker URL comes from an environment variable of the controller's process (the
  Ray head), never from the Serve config that carries the policy's arguments;
- the jobs a consumer already took count too (``in_flight``, reported by each
  consumer through ``record_autoscaling_stats``). A queue drained into the consumers'
  hands is not idle work: without this the policy scales consumers down, to zero, while
  they are mid-job.

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

    def _ensure_broker(self) -> None:
        if self._broker_url:
            super()._ensure_broker()

    async def _poll_once(self) -> None:
        if self._broker is not None:
            await super()._poll_once()

    def __call__(self, ctx: AutoscalingContext) -> tuple[int | float, dict[str, Any]]:
        _, state = super().__call__(ctx)  # starts a poll when one is due
        metrics = ctx.aggregated_metrics or {}
        held = sum(metrics.get(IN_FLIGHT_METRIC, {}).values())
        workload = self._queue_length + held + ctx.total_num_requests
        state = {**state, "queue_length": self._queue_length, "in_flight": held}
        if ctx.current_num_replicas == 0:
            return (1 if workload > 0 else 0), state
        assert ctx.config is not None
        per_replica = ctx.config.get_target_ongoing_requests()
        return workload / per_replica, state
