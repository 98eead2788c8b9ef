"""Ray Serve's Celery adapter with the broker URLs read from the replica's environment.

``TaskProcessorConfig`` is part of the deployment's definition, so a URL written there
would carry the broker's password into the Serve config and the controller's
checkpoints. The consumers' config names environment variables instead
(``env:SERVE_APP_BROKER_URL``), resolved here when the replica starts its consumer.

Stopping: Ray's adapter asks its worker to shut down by a broadcast on the broker
(Celery's ``shutdown`` control command). A worker that started less than a second or
two before is not listening yet and never gets it: the replica then exits ten seconds
later with Celery still consuming, taking jobs it can only drop. ``stop_consumer`` here
stops the worker in-process instead (Celery's own warm shutdown, as on SIGTERM): the
jobs it runs finish and are acknowledged, the ones it reserved go back to the queue.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_processor import CeleryTaskProcessorAdapter

from serve_app.jobs.broker import is_redis, resolve_url

ENV_PREFIX = "env:"
STOP_TIMEOUT_S = 25.0
"""How long a stopping consumer waits for the jobs it runs (the deployment's
``graceful_shutdown_timeout_s`` is 30 s); a job still running then is answered on its
next delivery."""

logger = logging.getLogger("ray.serve")


def env_ref(env_name: str) -> str:
    """The reference to environment variable ``env_name`` the adapter resolves."""
    return f"{ENV_PREFIX}{env_name}"


def resolve(value: str) -> str:
    """``value``, or the URL in the environment variable it refers to."""
    if value.startswith(ENV_PREFIX):
        return resolve_url(value[len(ENV_PREFIX) :])
    return value


class EnvCeleryAdapter(CeleryTaskProcessorAdapter):
    """``CeleryTaskProcessorAdapter`` whose ``broker_url``/``backend_url`` may be
    ``env:<VARIABLE>`` references (resolved at construction, in the replica); Redis
    transport options are dropped when the broker turns out not to be Redis."""

    def __init__(self, config: TaskProcessorConfig, *args: Any, **kwargs: Any) -> None:
        adapter_config = config.adapter_config
        if isinstance(adapter_config, CeleryAdapterConfig):
            broker_url = resolve(adapter_config.broker_url)
            custom = dict(adapter_config.app_custom_config or {})
            if not is_redis(broker_url):
                custom.pop("broker_transport_options", None)
            adapter_config = adapter_config.model_copy(
                update={
                    "broker_url": broker_url,
                    "backend_url": resolve(adapter_config.backend_url),
                    "app_custom_config": custom,
                }
            )
            config = config.model_copy(update={"adapter_config": adapter_config})
        super().__init__(config, *args, **kwargs)

    def stop_consumer(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop this replica's Celery worker: a warm shutdown requested in-process
        (what Celery's SIGTERM handler does), then Ray's broadcast, then wait up to
        ``timeout`` seconds for the jobs it runs."""
        thread = self._worker_thread
        if thread is not None and thread.is_alive():
            from celery.worker import state

            # Read by the worker's loop on each turn (and at its start, for a worker
            # still booting): it raises WorkerShutdown, Celery's warm shutdown.
            state.should_stop = 0
        super().stop_consumer(timeout=timeout)
