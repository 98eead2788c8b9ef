"""The server application counts the model-route requests it answers itself (no model
application took them): a model that is not running (503) under its name, an unknown
name (404) under ``(unknown)``. The real routes over ASGI, no Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from serve_app.server.metrics import (
    EXPORTED,
    UNKNOWN_MODEL,
    RayUnroutedMetrics,
    exported_name,
)
from serve_app.server.oip_server import ModelState, OIPServer, server_api
from tests.unit.server.test_server_http import servable_instance_dependency

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def states(names: list[str]) -> dict[str, ModelState]:
    return {
        "up": ModelState("up", True, "RUNNING", ""),
        "down": ModelState("down", False, "DELETING", ""),
    }


@pytest.fixture
async def counted() -> AsyncIterator[tuple[httpx.AsyncClient, list[tuple[str, int]]]]:
    seen: list[tuple[str, int]] = []
    server_class = OIPServer.func_or_class.__bases__[0]
    replica = server_class(
        {"models": ["up", "down"], "http": {"retry_after_s": 2}},
        state_reader=states,
        unrouted=lambda model, status: seen.append((model, status)),
    )
    server_api.dependency_overrides[servable_instance_dependency(server_api)] = lambda: replica
    transport = httpx.ASGITransport(app=server_api)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, seen
    finally:
        server_api.dependency_overrides.clear()


async def test_answers_for_model_routes_are_counted_by_model_and_status(
    counted: tuple[httpx.AsyncClient, list[tuple[str, int]]],
) -> None:
    client, seen = counted
    r = await client.post("/v2/models/down/infer", json={})
    assert (r.status_code, r.headers["retry-after"]) == (503, "2")
    assert r.json()["error"] == "model 'down' is not ready (DELETING)"
    r = await client.post("/v2/models/random-name-1/infer", json={})
    assert (r.status_code, r.json()["error"]) == (
        404,
        "unknown model 'random-name-1'; served models: ['up', 'down']",
    )
    # The server's view of Serve lags (read every second): a running model whose route
    # is already gone (deleted while draining) is not called ready.
    r = await client.post("/v2/models/up/infer", json={})
    assert (r.status_code, r.json()["error"]) == (
        503,
        "model 'up' is not ready (no route to it: starting or stopping; last state RUNNING)",
    )
    assert (await client.get("/v2/models")).status_code == 200  # not a model route
    assert seen == [("down", 503), (UNKNOWN_MODEL, 404), ("up", 503)]


async def test_the_counter_is_an_exported_family() -> None:
    assert exported_name("serve_app_unrouted_requests") == ["ray_serve_app_unrouted_requests_total"]
    assert "ray_serve_app_unrouted_requests_total" in EXPORTED


async def test_a_replica_without_a_test_reader_records_into_ray() -> None:
    """In a replica (no state reader given) the counter is Ray's; outside a replica it
    records nowhere, without an error."""
    server_class = OIPServer.func_or_class.__bases__[0]
    replica = server_class({"models": ["up"]})
    assert type(replica._unrouted.__self__) is RayUnroutedMetrics
    replica._unrouted("up", 503)
