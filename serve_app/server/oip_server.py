"""``OIPServer``: the server-level OIP routes at ``/`` (``/v2``, health, model list).

Model routes (``/v2/models/<name>/...``) are taken by the model applications; a request
that reaches this deployment on such a path is either for an unknown model (404) or for
a model whose application is not running (503 with ``Retry-After`` and the reason that
Serve reports, e.g. the weight file that failed verification).
"""

import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from ray import serve

import serve_app
from serve_app.app_args import ServerAppArgs
from serve_app.errors import ModelNotFound, ServiceUnavailable
from serve_app.server.http import install_error_handlers, json_error

server_api = FastAPI(title="serve_app", docs_url=None, redoc_url=None, openapi_url=None)
install_error_handlers(server_api)

STATUS_CACHE_S = 1.0


@dataclass(frozen=True)
class ModelState:
    """What Serve says about one model application."""

    name: str
    ready: bool
    status: str
    message: str

    def to_json(self) -> dict[str, Any]:
        """Body form for ``/v2/models``."""
        return {
            "name": self.name,
            "ready": self.ready,
            "state": self.status,
            "reason": self.message,
        }


def status_name(status: Any) -> str:
    """``RUNNING`` for ``ApplicationStatus.RUNNING`` (an enum) or for a plain string."""
    return str(getattr(status, "value", status))


def read_model_states(names: list[str]) -> dict[str, ModelState]:
    """Ask the Serve controller for each model application's status."""
    apps = serve.status().applications
    states = {}
    for name in names:
        app = apps.get(name)
        if app is None:
            states[name] = ModelState(name, False, "NOT_STARTED", "application not deployed")
            continue
        messages = [app.message] + [d.message for d in app.deployments.values() if d.message]
        states[name] = ModelState(
            name,
            status_name(app.status) == "RUNNING",
            status_name(app.status),
            " | ".join(m for m in messages if m),
        )
    return states


@serve.deployment(name="OIPServer", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(server_api)
class OIPServer:
    """Server metadata, liveness, readiness and the model list."""

    def __init__(self, args: dict[str, Any], state_reader: Any = None) -> None:
        self.args = ServerAppArgs.model_validate(args)
        self._read_states = state_reader or read_model_states
        self._cache: tuple[float, dict[str, ModelState]] | None = None

    def _states(self) -> dict[str, ModelState]:
        """Models and pipelines by name; a pipeline is ready when its own application
        and every model its required nodes use are."""
        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > STATUS_CACHE_S:
            apps = self._read_states(self.args.models + list(self.args.pipelines))
            for name, needs in self.args.pipelines.items():
                own = apps[name]
                blocked = [apps[m] for m in needs if not apps[m].ready]
                if own.ready and blocked:
                    reason = "; ".join(f"model {b.name}: {b.status} {b.message}" for b in blocked)
                    apps[name] = ModelState(name, False, "WAITING_FOR_MODELS", reason.strip())
            self._cache = (now, apps)
        return self._cache[1]

    @server_api.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "serve_app",
            "version": serve_app.__version__,
            "extensions": ["binary_tensor_data"],
        }

    @server_api.get("/v2/health/live")
    async def live(self) -> dict[str, Any]:
        return {"live": True}

    @server_api.get("/v2/health/ready")
    async def ready(self) -> Response:
        states = self._states()
        not_ready = [s for s in states.values() if not s.ready]
        if not_ready:
            detail = "; ".join(f"{s.name}: {s.status} {s.message}".strip() for s in not_ready)
            return json_error(
                503,
                f"not ready: {detail}",
                headers={"Retry-After": str(self.args.http.retry_after_s)},
            )
        return Response(b'{"ready":true}', media_type="application/json")

    @server_api.get("/v2/models")
    async def list_models(self) -> dict[str, Any]:
        states = self._states()
        models = [states[m].to_json() for m in self.args.models]
        pipelines = [
            states[p].to_json() | {"platform": "ensemble", "models": needs}
            for p, needs in self.args.pipelines.items()
        ]
        return {"models": models + pipelines}

    @server_api.api_route("/v2/models/{name}", methods=["GET", "POST"])
    @server_api.api_route("/v2/models/{name}/{rest:path}", methods=["GET", "POST"])
    async def unrouted_model(self, name: str, rest: str = "") -> Response:
        if name not in self.args.models and name not in self.args.pipelines:
            served = self.args.models + list(self.args.pipelines)
            raise ModelNotFound(f"unknown model {name!r}; served models: {served}")
        state = self._states().get(name)
        reason = f"{state.status}: {state.message}" if state else "unknown state"
        raise ServiceUnavailable(
            f"model {name!r} is not ready ({reason})", retry_after_s=self.args.http.retry_after_s
        )
