"""Render an ``AppConfig`` into a Serve config (``serve run``/``serve deploy`` file and
the RayService ``serveConfigV2``). Pure functions; no Ray import needed at call time."""

from __future__ import annotations

from typing import Any

from serve_app.config import AppConfig, AutoscalingConfig, ModelConfig
from serve_app.config.pipeline import ServedPipelineConfig
from serve_app.deploy.app_args import (
    CONSUMER_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    MULTIPLEX_DEPLOYMENT,
    ROUTER_DEPLOYMENT,
    SERVER_DEPLOYMENT,
    ConsumerAppArgs,
    ModelAppArgs,
    MultiplexAppArgs,
    PipelineAppArgs,
    ServerAppArgs,
    ServerUserConfig,
    StagedAppArgs,
    consumer_app,
    stage_deployment,
)
from serve_app.deploy.version_policy import version_applications

IMPORT_PATH = "serve_app.app:build_app"
QUEUE_POLICY = "serve_app.server.job_autoscaling:QueueDepthPolicy"
"""Import path of the consumers' autoscaling policy (runs in the Serve controller)."""
CONSUMER_DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
"""Set to 0 for consumers: Ray's minimum drain of HTTP replicas behind HAProxy."""
MAX_CONSTRUCTOR_RETRIES = 3
"""A model with bad weights fails the same way every time: give up after 3 tries, so the
application turns DEPLOY_FAILED and requests fail fast instead of waiting for a replica."""


def deployment_options(model: ModelConfig, retry_after_s: int = 1) -> dict[str, Any]:
    """Serve deployment options of a model, as in the config file's ``deployments``.

    Beyond ``max_queued_requests`` Serve rejects with 503 and ``Retry-After``
    (``backpressure_config``), also on the HAProxy/direct-ingress path."""
    opts: dict[str, Any] = {
        "name": MODEL_DEPLOYMENT,
        "max_ongoing_requests": model.max_ongoing_requests,
        "max_queued_requests": model.max_queued_requests,
        "user_config": model.batching.model_dump(),
        "ray_actor_options": model.resources.to_ray_actor_options(),
        "health_check_period_s": model.health_check_period_s,
        "health_check_timeout_s": model.health_check_timeout_s,
        "graceful_shutdown_timeout_s": model.graceful_shutdown_timeout_s,
        "max_constructor_retry_count": MAX_CONSTRUCTOR_RETRIES,
        "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s},
    }
    if model.autoscaling is not None:
        opts["autoscaling_config"] = model.autoscaling.to_serve()
    else:
        opts["num_replicas"] = model.num_replicas
    return opts


def router_options(
    num_replicas: int = 1,
    max_ongoing_requests: int = 256,
    autoscaling: AutoscalingConfig | None = None,
) -> dict[str, Any]:
    """Options of a ``PipelineRouter``: it mostly awaits its nodes, so no CPU is
    reserved and it takes many requests at once; ``autoscaling`` replaces the fixed
    ``num_replicas``."""
    sizing: dict[str, Any] = (
        {"autoscaling_config": autoscaling.to_serve()}
        if autoscaling is not None
        else {"num_replicas": num_replicas}
    )
    return {
        "name": ROUTER_DEPLOYMENT,
        **sizing,
        "max_ongoing_requests": max_ongoing_requests,
        "ray_actor_options": {"num_cpus": 0},
    }


def stage_options(model: ModelConfig, index: int, retry_after_s: int = 1) -> dict[str, Any]:
    """Options of stage ``index`` of a staged model: the model's batching and limits,
    the stage's own resources and replicas."""
    assert model.stages is not None
    stage = model.stages[index]
    opts = deployment_options(model, retry_after_s)
    opts["name"] = stage_deployment(index)
    opts["ray_actor_options"] = stage.resources.to_ray_actor_options()
    opts.pop("num_replicas", None)
    opts.pop("autoscaling_config", None)
    if stage.autoscaling is not None:
        opts["autoscaling_config"] = stage.autoscaling.to_serve()
    else:
        opts["num_replicas"] = stage.num_replicas
    return opts


def model_application(app: AppConfig, model: ModelConfig) -> dict[str, Any]:
    """One Serve application per model, routed at ``/v2/models/<name>``: the model
    deployment answers its own OIP routes, so a request takes one hop. A staged model's
    application is a router plus one deployment per stage."""
    if model.multiplex:
        # No user_config: tenants are loaded on demand, one request at a time each, with
        # no batching across requests.
        options = deployment_options(model, app.http.retry_after_s)
        options["name"] = MULTIPLEX_DEPLOYMENT
        options.pop("user_config")
        return {
            "name": model.app_name,
            "route_prefix": model.route_prefix,
            "import_path": IMPORT_PATH,
            "args": MultiplexAppArgs.from_config(app, model).model_dump(mode="json"),
            "deployments": [options],
        }
    if model.stages:
        return {
            "name": model.app_name,
            "route_prefix": model.route_prefix,
            "import_path": IMPORT_PATH,
            "args": StagedAppArgs.from_config(app, model).model_dump(mode="json"),
            "deployments": [router_options()]
            + [stage_options(model, i, app.http.retry_after_s) for i in range(len(model.stages))],
        }
    return {
        "name": model.app_name,
        "route_prefix": model.route_prefix,
        "import_path": IMPORT_PATH,
        "args": ModelAppArgs.from_config(app, model).model_dump(mode="json"),
        "deployments": [deployment_options(model, app.http.retry_after_s)],
    }


def pipeline_application(app: AppConfig, pipeline: ServedPipelineConfig) -> dict[str, Any]:
    """One Serve application per pipeline: its router at ``/v2/models/<pipeline>``,
    calling the models' own applications (no model deployment is duplicated)."""
    return {
        "name": pipeline.name,
        "route_prefix": pipeline.route_prefix,
        "import_path": IMPORT_PATH,
        "args": PipelineAppArgs.from_config(app, pipeline).model_dump(mode="json"),
        "deployments": [pipeline_router_options(app, pipeline)],
    }


def pipeline_router_options(app: AppConfig, pipeline: ServedPipelineConfig) -> dict[str, Any]:
    """The router's options: its own (``router: separate``), or its host model's
    (``router: host``: the router's replicas load and run that model)."""
    if pipeline.router == "separate":
        return router_options(
            pipeline.num_replicas, pipeline.max_ongoing_requests, pipeline.autoscaling
        )
    return deployment_options(app.model(pipeline.host_model), app.http.retry_after_s) | {
        "name": ROUTER_DEPLOYMENT
    }


def server_application(app: AppConfig) -> dict[str, Any]:
    """The server application at ``/``: ``/v2``, health, model list, and the answers
    (404 unknown, 503 not ready) for model routes no model application has taken."""
    return {
        "name": app.server_name,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": ServerAppArgs.from_config(app).model_dump(mode="json"),
        "deployments": [
            {
                "name": SERVER_DEPLOYMENT,
                "num_replicas": 1,
                "max_ongoing_requests": 256,
                "ray_actor_options": {"num_cpus": 0},
                # A canary or a version policy changes it: applied without a restart.
                "user_config": ServerUserConfig.from_config(app).model_dump(mode="json"),
            }
        ],
    }


def consumer_metrics_interval_s(poll_interval_s: float) -> float:
    """How often a consumer reports the jobs it holds: as often as the queue is polled,
    within 0.5..2 s (the look-back window is at least 4 s)."""
    return min(2.0, max(0.5, poll_interval_s))


def consumer_application(app: AppConfig, target: str) -> dict[str, Any]:
    """One application per job target: its ``JobConsumer``s, no HTTP route, scaled by
    ``QueueDepthPolicy`` on the queue's depth plus the jobs they hold, from zero."""
    assert app.jobs is not None
    scaling = app.jobs.consumers
    queue = app.jobs.queue_settings(target)
    return {
        "name": consumer_app(target),
        "route_prefix": None,
        "import_path": IMPORT_PATH,
        "args": ConsumerAppArgs.from_config(app, target).model_dump(mode="json"),
        "deployments": [
            {
                "name": CONSUMER_DEPLOYMENT,
                # Celery runs this many jobs at once per replica (its worker threads).
                "max_ongoing_requests": app.jobs.consumer_concurrency,
                "ray_actor_options": {
                    # It waits on its target; the target's replicas hold the CPUs and GPUs.
                    "num_cpus": 0,
                    # A stopping replica keeps consuming until Serve calls its destructor,
                    # which with the HAProxy ingress comes only after Ray's 30 s minimum
                    # drain for HTTP replicas: jobs taken meanwhile would be cut off and
                    # wait for redelivery. A consumer has no HTTP route to drain.
                    "runtime_env": {"env_vars": {CONSUMER_DRAIN_ENV: "0"}},
                },
                "graceful_shutdown_timeout_s": 30,
                "autoscaling_config": {
                    "min_replicas": scaling.min_replicas,
                    "max_replicas": scaling.max_replicas,
                    "target_ongoing_requests": scaling.target_jobs_per_consumer,
                    "upscale_delay_s": scaling.upscale_delay_s,
                    "downscale_delay_s": scaling.downscale_delay_s,
                    # Each consumer reports the jobs it holds this often (Ray's default,
                    # 10 s, is longer than the window: held jobs would read as none, and
                    # consumers were scaled down mid-job).
                    "metrics_interval_s": consumer_metrics_interval_s(scaling.poll_interval_s),
                    "look_back_period_s": max(4.0, 2 * scaling.poll_interval_s),
                    "policy": {
                        "policy_function": QUEUE_POLICY,
                        "policy_kwargs": {
                            "broker_url_env": queue.broker_url_env,
                            "queue_name": queue.queues.jobs,
                            "poll_interval_s": scaling.poll_interval_s,
                            "redelivery_after_s": app.jobs.redelivery_after_s,
                            "rabbitmq_management_url_env": app.jobs.rabbitmq_management_url_env,
                        },
                    },
                },
            }
        ],
    }


def render_serve_config(
    app: AppConfig, *, http_host: str | None = None, proxy_location: str = "EveryNode"
) -> dict[str, Any]:
    """The full Serve config dict (validates against Ray's ``ServeDeploySchema``)."""
    http_options: dict[str, Any] = {
        "host": http_host or app.http.host,
        "port": app.http.port,
    }
    if app.http.request_timeout_s is not None:
        http_options["request_timeout_s"] = app.http.request_timeout_s
    config: dict[str, Any] = {
        "proxy_location": proxy_location,
        "http_options": http_options,
    }
    if app.grpc.enabled:
        config["grpc_options"] = app.grpc.to_serve(app.http.request_timeout_s)
    return config | {
        "logging_config": {
            "encoding": app.logging.encoding,
            "log_level": app.logging.level,
            "enable_access_log": app.http.access_log,
        },
        "applications": [server_application(app)]
        + [
            a
            for m in app.models
            if m.standalone  # the others run only fused into their hosts' replicas
            for a in version_applications(m, model_application(app, m))
        ]
        + [pipeline_application(app, p) for p in app.pipelines]
        + [consumer_application(app, t) for t in (app.jobs.targets if app.jobs else [])],
    }
