"""``build_app``: the single Serve ``import_path`` of every serve_app application.

The Serve config (``configs/local.yaml``, the RayService ``serveConfigV2``) lists one
server application and one application per model, all with this import path; ``args``
says which one to build.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from ray.serve import Application

from serve_app.config import AppConfig, ModelAppArgs, ServerAppArgs
from serve_app.serve_config import deployment_options

_ARGS: TypeAdapter[ModelAppArgs | ServerAppArgs] = TypeAdapter(ModelAppArgs | ServerAppArgs)


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` (``kind: model`` or ``kind: server``) and bind the deployment."""
    parsed = _ARGS.validate_python(args)
    if isinstance(parsed, ModelAppArgs):
        from serve_app.server.model_deployment import ModelDeployment

        return ModelDeployment.bind(parsed.model_dump(mode="json"))  # type: ignore[attr-defined]
    from serve_app.server.oip_server import OIPServer

    return OIPServer.bind(parsed.model_dump(mode="json"))  # type: ignore[attr-defined]


def build_model_app(app: AppConfig, name: str, **bind_kwargs: Any) -> Application:
    """A model application with its deployment options applied in code (for
    ``serve.run`` in-process, e.g. tests that inject an adapter loader)."""
    from serve_app.server.model_deployment import ModelDeployment

    model = app.model(name)
    opts = deployment_options(model, app.http.retry_after_s)
    opts.pop("name")
    args = ModelAppArgs.from_config(app, model).model_dump(mode="json")
    return ModelDeployment.options(**opts).bind(args, **bind_kwargs)  # type: ignore[attr-defined]
