"""``build_app``: the single Serve ``import_path`` of every serve_app application.

The Serve config (``configs/local.yaml``, the RayService ``serveConfigV2``) lists one
server application, one application per model and one per pipeline, all with this
import path; ``args`` (``kind``) says which one to build.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.deploy.app_args import (
    APP_ARGS,
    ConsumerAppArgs,
    ModelAppArgs,
    MultiplexAppArgs,
    PipelineAppArgs,
    StagedAppArgs,
    stage_deployment,
)
from serve_app.graph.staged import stage_node


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` and bind the application's deployments.

    ``kind: model`` binds one ``ModelDeployment``; ``kind: multiplexed`` binds one
    ``MultiplexedDeployment`` serving a family of tenants; ``kind: staged`` binds one
    ``ModelDeployment`` per stage behind a ``PipelineRouter`` that chains them;
    ``kind: pipeline`` binds a ``PipelineRouter`` that calls the models' own
    applications; ``kind: consumer`` binds one target's ``JobConsumer``s (Serve task
    consumers on its queue); ``kind: server`` binds the ``OIPServer``.
    """
    parsed = APP_ARGS.validate_python(args)
    if isinstance(parsed, ModelAppArgs):
        from serve_app.server.model_deployment import ModelDeployment

        return ModelDeployment.bind(parsed.model_dump(mode="json"))  # type: ignore[attr-defined]
    if isinstance(parsed, MultiplexAppArgs):
        from serve_app.server.multiplexed import MultiplexedDeployment

        return MultiplexedDeployment.bind(parsed.model_dump(mode="json"))  # type: ignore[attr-defined]
    if isinstance(parsed, StagedAppArgs):
        from serve_app.server.model_deployment import ModelDeployment
        from serve_app.server.pipeline_deployment import PipelineRouter

        stages = {
            stage_node(i): ModelDeployment.options(  # type: ignore[attr-defined]
                name=stage_deployment(i)
            ).bind(parsed.stage_args(i).model_dump(mode="json"))
            for i in range(len(parsed.stages))
        }
        return PipelineRouter.bind(parsed.model_dump(mode="json"), stages)  # type: ignore[attr-defined]
    if isinstance(parsed, PipelineAppArgs):
        from serve_app.server.pipeline_deployment import PipelineRouter

        return PipelineRouter.bind(parsed.model_dump(mode="json"))  # type: ignore[attr-defined]
    if isinstance(parsed, ConsumerAppArgs):
        from serve_app.server.job_consumer import consumer_deployment

        return consumer_deployment(parsed).bind(parsed.model_dump(mode="json"))  # type: ignore[no-any-return]
    from serve_app.server.oip_server import OIPServer

    return OIPServer.bind(parsed.model_dump(mode="json"))  # type: ignore[attr-defined]
