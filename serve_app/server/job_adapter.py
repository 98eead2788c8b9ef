"""Ray Serve's Celery adapter with the broker URLs read from the replica's environment.

``TaskProcessorConfig`` is part of the deployment's definition, so a URL written there
would carry the broker's password into the Serve config and the controller's
checkpoints. The consumers' config names environment variables instead
(``env:SERVE_APP_BROKER_URL``), resolved here when the replica starts its consumer.
"""

from __future__ import annotations

from typing import Any

from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_processor import CeleryTaskProcessorAdapter

from serve_app.jobs.broker import is_redis, resolve_url

ENV_PREFIX = "env:"


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
