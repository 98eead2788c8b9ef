"""A tenant without a folder in the repository is a 404 before the hop to its family
(Serve's router would keep its multiplexed id forever); the listing behind that answer
is cached, refreshed off the loop, one refresh at a time. No Ray: stand-in handles."""

from __future__ import annotations

import asyncio
import inspect
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config import HttpConfig
from serve_app.errors import ModelNotFound
from serve_app.server.oip_server import ModelState, OIPServer, server_api
from serve_app.server.tenant_forward import ForwardedResponse, TenantForwarder
from serve_app.server.tenant_listing import TenantListing, scan_tenant_folders


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class StandInHandle:
    """Records each call; answers 200."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Any]] = []
        self._options: dict[str, Any] = {}

    def options(self, **kw: Any) -> StandInHandle:
        self._options = kw
        return self

    async def remote(self, forwarded: Any) -> ForwardedResponse:
        self.calls.append((self._options, forwarded))
        return ForwardedResponse(200, b'{"ok":1}', {"content-type": "application/json"})


class Scans:
    """A scan that returns ``names`` (counting calls), or blocks until released."""

    def __init__(self, names: set[str], blocked: bool = False) -> None:
        self.names = set(names)
        self.calls = 0
        self.release = threading.Event()
        if not blocked:
            self.release.set()

    def __call__(self) -> frozenset[str]:
        self.calls += 1
        self.release.wait(10)
        return frozenset(self.names)


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make_request(path: str) -> Any:
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    return Request(
        {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""},
        receive,
    )


def forwarder(listing: TenantListing) -> tuple[TenantForwarder, StandInHandle]:
    handle = StandInHandle()
    fwd = TenantForwarder(
        {"heads": "tenant-"}, HttpConfig(), handle_of=lambda _: handle, listing=listing
    )
    return fwd, handle


@pytest.mark.anyio
async def test_an_unknown_tenant_is_a_404_without_touching_the_handle() -> None:
    fwd, handle = forwarder(TenantListing("/mnt/models", Scans({"tenant-0001"})))
    with pytest.raises(ModelNotFound) as e:
        await fwd.forward("heads", "tenant-9999", make_request("/v2/models/tenant-9999"))
    assert str(e.value) == (
        "unknown model 'tenant-9999': no tenant folder /mnt/models/tenant-9999 "
        "for the multiplexed family 'heads'"
    )
    assert handle.calls == []
    response = await fwd.forward("heads", "tenant-0001", make_request("/v2/models/tenant-0001"))
    assert (response.status_code, len(handle.calls)) == (200, 1)


@pytest.mark.anyio
async def test_a_flood_of_unknown_names_scans_once_per_miss_interval() -> None:
    clock, scans = Clock(), Scans({"tenant-0001"})
    listing = TenantListing("/m", scans, ttl_s=5.0, miss_refresh_s=1.0, clock=clock)
    fwd, handle = forwarder(listing)
    for i in range(200):
        with pytest.raises(ModelNotFound):
            await fwd.forward("heads", f"tenant-x{i}", make_request(f"/v2/models/tenant-x{i}"))
    assert (scans.calls, handle.calls) == (1, [])
    scans.names.add("tenant-0002")  # published now: found once the listing is 1 s old
    clock.now_s += 1.5
    response = await fwd.forward("heads", "tenant-0002", make_request("/v2/models/tenant-0002"))
    assert (response.status_code, scans.calls) == (200, 2)


@pytest.mark.anyio
async def test_a_known_tenant_does_not_wait_for_a_stale_listing() -> None:
    clock, scans = Clock(), Scans({"tenant-0001"})
    listing = TenantListing("/m", scans, ttl_s=5.0, wait_s=5.0, clock=clock)
    fwd, handle = forwarder(listing)
    await fwd.forward("heads", "tenant-0001", make_request("/v2/models/tenant-0001"))
    scans.release.clear()  # the volume hangs from now on
    clock.now_s += 6
    response = await asyncio.wait_for(
        fwd.forward("heads", "tenant-0001", make_request("/v2/models/tenant-0001")), 1.0
    )
    assert (response.status_code, len(handle.calls), listing.scans) == (200, 2, 2)
    scans.release.set()


@pytest.mark.anyio
async def test_a_hung_repository_holds_one_scan_and_forwards_unchecked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scans = Scans({"tenant-0001"}, blocked=True)
    listing = TenantListing("/mnt/models", scans, wait_s=0.2)
    fwd, handle = forwarder(listing)
    responses = await asyncio.gather(
        *(
            fwd.forward("heads", f"tenant-000{i}", make_request(f"/v2/models/tenant-000{i}"))
            for i in range(8)
        )
    )
    # The family's replica decides, as it did without a listing; one scan is in flight.
    assert [r.status_code for r in responses] == [200] * 8
    assert (scans.calls, listing.scans, len(handle.calls)) == (1, 1, 8)
    assert [r.getMessage() for r in caplog.records] == [
        "tenants are forwarded unchecked: the model repository at /mnt/models cannot be "
        "listed (it did not answer in time)"
    ]
    scans.release.set()
    await asyncio.sleep(0.05)  # the one scan ends; the next request uses its listing
    with pytest.raises(ModelNotFound):
        await fwd.forward("heads", "tenant-0002", make_request("/v2/models/tenant-0002"))
    assert (scans.calls, len(handle.calls)) == (1, 8)


@pytest.mark.anyio
async def test_an_unmounted_repository_forwards_unchecked(tmp_path: Path) -> None:
    from serve_app.server.tenant_listing import repository_listing

    fwd, handle = forwarder(repository_listing(tmp_path / "absent", ["tenant-"]))
    response = await fwd.forward("heads", "tenant-0001", make_request("/v2/models/tenant-0001"))
    assert (response.status_code, len(handle.calls)) == (200, 1)


def test_the_scan_lists_tenant_folders_only(tmp_path: Path) -> None:
    for name in ("tenant-0001", "tenant-0002", "minilm", "tenant-"):
        (tmp_path / name).mkdir()
    (tmp_path / "tenant-0003").write_text("a file, not a tenant")
    assert scan_tenant_folders(tmp_path, ["tenant-"]) == {"tenant-0001", "tenant-0002"}


# --- through the server application's HTTP route ---------------------------------------


def servable_instance_dependency(api: Any) -> Any:
    """The dependency ``serve.ingress`` put as the default of every route's ``self``."""
    from ray.serve._private.http_util import _walk_fastapi_routes

    for route, _, _ in _walk_fastapi_routes(api):
        if getattr(route.endpoint, "_serve_cls", None) is not None:
            return inspect.signature(route.endpoint).parameters["self"].default.dependency
    raise AssertionError("no class-based route in the app")


@pytest.mark.anyio
async def test_the_server_answers_an_unknown_tenant_404_with_the_error_body(
    tmp_path: Path,
) -> None:
    (tmp_path / "tenant-0001").mkdir()
    args = {
        "models": [],
        "families": {"heads": "tenant-"},
        "repository": {"root": str(tmp_path)},
    }
    server_class = OIPServer.func_or_class.__bases__[0]
    replica = server_class(
        args, state_reader=lambda names: {n: ModelState(n, True, "RUNNING", "") for n in names}
    )
    handle = StandInHandle()
    replica._tenants._handles["heads"] = handle
    server_api.dependency_overrides[servable_instance_dependency(server_api)] = lambda: replica
    try:
        transport = httpx.ASGITransport(app=server_api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/v2/models/tenant-9999/infer", content=b"{}")
            known = await client.get("/v2/models/tenant-0001")
    finally:
        server_api.dependency_overrides.clear()
    assert r.status_code == 404
    assert r.json() == {
        "error": f"unknown model 'tenant-9999': no tenant folder {tmp_path / 'tenant-9999'} "
        "for the multiplexed family 'heads'",
        "request_id": r.json()["request_id"],
    }
    assert r.json()["request_id"]
    assert known.status_code == 200
    assert [options for options, _ in handle.calls] == [
        {"multiplexed_model_id": "tenant-0001", "method_name": "forward"}
    ]
