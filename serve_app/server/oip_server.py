"""``OIPServer``: the server-level OIP routes at ``/`` (``/v2``, health, model list).

Model routes (``/v2/models/<name>/...``) are taken by the model applications; a request
that reaches this deployment on such a path is either for an unknown model (404) or for
a model whose application is not running (503 with ``Retry-After`` and the reason that
Serve reports, e.g. the weight file that failed verification). Both are counted in
``serve_app_unrouted_requests``: no model's own counter sees them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve

import serve_app
from serve_app.deploy.app_args import ServerAppArgs, ServerUserConfig
from serve_app.deploy.progress import concise, state_name
from serve_app.errors import ModelNotFound, ServiceUnavailable
from serve_app.server.controller_view import ControllerView
from serve_app.server.grpc_server_methods import GrpcServerMethods
from serve_app.server.http import install_error_handlers
from serve_app.server.job_routes import JobRoutes, QueueDepthReporter
from serve_app.server.metrics import UNKNOWN_MODEL, RayUnroutedMetrics
from serve_app.server.tenant_forward import TenantForwarder
from serve_app.server.tenant_listing import repository_listing

server_api = FastAPI(title="serve_app", docs_url=None, redoc_url=None, openapi_url=None)
install_error_handlers(server_api)

STATUS_PERIOD_S = 1.0
"""How often the controller is asked for the applications' states."""
STATUS_TIMEOUT_S = 5.0
"""A controller read slower than this is abandoned (the last answer stays)."""
STATUS_STALE_S = 15.0
"""Older than this, the state is unknown: readiness answers 503 and says why."""


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


def read_model_states(names: list[str]) -> dict[str, ModelState]:
    """Ask the Serve controller (blocking) for each application's status: one RPC that
    returns statuses only (``serve.status()`` builds every deployment's full details)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RuntimeError("no Serve controller")
    apps = {s.name: s for s in client.list_serve_statuses()}
    states = {}
    for name in names:
        app = apps.get(name)
        if app is None:
            states[name] = ModelState(name, False, "NOT_STARTED", "application not deployed")
            continue
        messages = [concise(app.app_status.message)] + [
            concise(d.message) for d in app.deployment_statuses
        ]
        state = state_name(app.app_status.status)
        states[name] = ModelState(
            name, state == "RUNNING", state, " | ".join(m for m in messages if m)
        )
    return states


@serve.deployment(name="OIPServer", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(server_api)
class OIPServer(GrpcServerMethods):
    """Server metadata, liveness, readiness and the model list; over gRPC also the
    model calls of clients that name no application (forwarded by model name)."""

    def __init__(
        self,
        args: dict[str, Any],
        state_reader: Any = None,
        unrouted: Callable[[str, int], None] | None = None,
    ) -> None:
        self.args = ServerAppArgs.model_validate(args)
        read = state_reader or read_model_states
        if unrouted is None and state_reader is None:  # a test passes its own state reader
            unrouted = RayUnroutedMetrics().observe
        self._unrouted = unrouted or (lambda model, status: None)
        self.user_config = ServerUserConfig()
        self._view: ControllerView[dict[str, ModelState]] = ControllerView(
            lambda: read(self._names()), STATUS_PERIOD_S, STATUS_TIMEOUT_S
        )
        listing = repository_listing(self.args.repository.root, self.args.families.values())
        self._tenants = TenantForwarder(self.args.families, self.args.http, listing=listing)
        self._jobs = JobRoutes(self.args.jobs, self.args.http.retry_after_s)
        if self.args.jobs and state_reader is None:  # a test passes its own state reader
            from serve_app.server.job_metrics import RayQueueMetrics

            QueueDepthReporter(
                self.args.jobs, self.args.jobs_poll_interval_s, RayQueueMetrics().set_depth
            ).start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the served versions' applications without a restart."""
        self.user_config = ServerUserConfig.model_validate(user_config)

    def _names(self) -> list[str]:
        sides = [a for apps in self.user_config.side_versions.values() for a in apps]
        return self.args.models + sides + list(self.args.pipelines)

    async def _states(self) -> dict[str, ModelState]:
        """Models and pipelines by name, from the cached controller view; a pipeline is
        ready when its own application and every model its required nodes use are.

        Raises:
            ServiceUnavailable: the controller has not answered for ``STATUS_STALE_S``.
        """
        latest = await self._view.get()
        if latest is None or latest[1] > STATUS_STALE_S:
            silence = "never answered" if latest is None else f"not answered for {latest[1]:.0f} s"
            raise ServiceUnavailable(
                f"state unknown: the Serve controller has {silence}",
                self.args.http.retry_after_s,
            )
        apps = dict(latest[0])
        for name, sides in self.user_config.side_versions.items():  # every version counts
            blocked = [apps.pop(a) for a in sides if a in apps]
            blocked = [b for b in blocked if not b.ready]
            if apps[name].ready and blocked:
                reason = "; ".join(f"{b.name}: {b.status} {b.message}" for b in blocked)
                apps[name] = ModelState(name, False, "WAITING_FOR_VERSIONS", reason.strip())
        for name, needs in self.args.pipelines.items():
            own = apps[name]
            blocked = [apps[m] for m in needs if not apps[m].ready]
            if own.ready and blocked:
                reason = "; ".join(f"model {b.name}: {b.status} {b.message}" for b in blocked)
                apps[name] = ModelState(name, False, "WAITING_FOR_MODELS", reason.strip())
        return apps

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
        states = await self._states()
        not_ready = [s for s in states.values() if not s.ready]
        if not_ready:
            detail = "; ".join(f"{s.name}: {s.status} {s.message}".strip() for s in not_ready)
            raise ServiceUnavailable(f"not ready: {detail}", self.args.http.retry_after_s)
        return Response(b'{"ready":true}', media_type="application/json")

    @server_api.get("/v2/models")
    async def list_models(self) -> dict[str, Any]:
        states = await self._states()
        models = [states[m].to_json() for m in self.args.models]
        pipelines = [
            states[p].to_json() | {"platform": "ensemble", "models": needs}
            for p, needs in self.args.pipelines.items()
        ]
        return {"models": models + pipelines}

    @server_api.get("/v2/jobs/{job_id}")
    async def job_status(self, job_id: str) -> Response:
        return await self._jobs.status(job_id)

    @server_api.get("/v2/jobs/{job_id}/response")
    async def job_answer(self, job_id: str) -> Response:
        return await self._jobs.answer(job_id)

    @server_api.delete("/v2/jobs/{job_id}")
    async def job_cancel(self, job_id: str) -> Response:
        return await self._jobs.cancel(job_id)

    @server_api.api_route("/v2/models/{name}", methods=["GET", "POST"])
    @server_api.api_route("/v2/models/{name}/{rest:path}", methods=["GET", "POST"])
    async def unrouted_model(self, request: Request, name: str, rest: str = "") -> Response:
        family = self._tenants.family_of(name)
        if family is not None:  # a tenant of a multiplexed family (see server/multiplexed.py)
            return await self._tenants.forward(family, name, request)
        # Counted here: Serve's and our models' own counters never see these answers.
        if name not in self.args.models and name not in self.args.pipelines:
            served = self.args.models + list(self.args.pipelines)
            self._unrouted(UNKNOWN_MODEL, 404)
            raise ModelNotFound(f"unknown model {name!r}; served models: {served}")
        self._unrouted(name, 503)
        state = (await self._states()).get(name)
        reason = "unknown state"
        if state is not None and state.ready:
            # The cached view (read every STATUS_PERIOD_S) still says RUNNING while the
            # model's route is already gone (being deleted, e.g. a drain) or not there yet.
            reason = f"no route to it: starting or stopping; last state {state.status}"
        elif state is not None:
            reason = f"{state.status}: {state.message}" if state.message else state.status
        raise ServiceUnavailable(
            f"model {name!r} is not ready ({reason})", retry_after_s=self.args.http.retry_after_s
        )
