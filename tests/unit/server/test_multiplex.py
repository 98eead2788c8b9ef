"""Multiplexed families without Ray: tenant loading (verified, 404 for unknown, a corrupt
tenant failing alone), the server's forwarding, and the family replica over HTTP with
Ray's LRU replaced by a plain one (the real ``@serve.multiplexed`` LRU is exercised in
tests/integration/test_multiplexing.py). The config rules are in
tests/unit/config/test_multiplex_config.py.
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from starlette.requests import Request

from serve_app.errors import IntegrityError, ModelNotFound, ServiceUnavailable
from serve_app.local.demo import MLP_HEAD_ARCH
from serve_app.local.demo_tenants import publish_tenants, tenant_name
from serve_app.models.architectures import ARCHITECTURES
from serve_app.models.registry import load_adapter
from serve_app.repository import ModelRepository
from serve_app.server.tenant_forward import ForwardedRequest, ForwardedResponse, TenantForwarder
from serve_app.server.tenant_runtime import TenantLoader

# --- tenant loading -----------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    publish_tenants(tmp_path, 3)
    return ModelRepository(tmp_path)


def loader_of(repo: ModelRepository, clock: Callable[[], float] | None = None) -> TenantLoader:
    extra = {"clock": clock} if clock else {}
    return TenantLoader(repo, "heads", "tenant-", "latest", load_adapter, "cpu", **extra)


def expected_output(repo: ModelRepository, tenant: str, x: np.ndarray) -> np.ndarray:
    """The tenant's MLP computed here from its published file."""
    module = ARCHITECTURES["mlp"](**MLP_HEAD_ARCH.kwargs)
    module.load_state_dict(load_file(str(repo.root / tenant / "1" / "model.safetensors")))
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def corrupt(repo: ModelRepository, tenant: str) -> Path:
    weights = repo.root / tenant / "1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return weights


def test_a_tenant_loads_its_own_verified_weights(repo: ModelRepository) -> None:
    loader = loader_of(repo)
    x = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    outs = {}
    for t in (tenant_name(0), tenant_name(1)):
        tenant = loader.load(t)
        outs[t] = tenant.runtime.forward_rows(tenant.runtime.prepare({"input": x}))["output"]
        np.testing.assert_allclose(outs[t], expected_output(repo, t, x), rtol=1e-5, atol=1e-6)
        assert tenant.metadata()["name"] == t and tenant.version == "1"
    assert not np.allclose(outs[tenant_name(0)], outs[tenant_name(1)])
    assert (loader.stats.loads, loader.stats.load_failures) == (2, 0)


def test_unknown_tenants_are_404_naming_them(repo: ModelRepository) -> None:
    loader = loader_of(repo)
    with pytest.raises(ModelNotFound) as e:
        loader.check_known("tenant-9999")
    assert str(e.value) == (
        f"unknown model 'tenant-9999': no tenant folder {repo.root / 'tenant-9999'} for the "
        "multiplexed family 'heads'"
    )
    with pytest.raises(ModelNotFound) as e:
        loader.check_known("other")
    assert str(e.value) == (
        "unknown model 'other': not a tenant of the multiplexed family 'heads' (tenant "
        "names start with 'tenant-')"
    )
    with pytest.raises(ModelNotFound, match="not a tenant"):
        loader.check_known("tenant-../../etc")  # a header value is never a path
    (repo.root / "tenant-half").mkdir()  # a folder without a complete version
    with pytest.raises(ModelNotFound) as e:
        loader.load("tenant-half")
    assert "has no complete version" in str(e.value)


def test_a_corrupt_tenant_fails_alone_is_remembered_and_recovers(repo: ModelRepository) -> None:
    now = [0.0]
    loader = loader_of(repo, clock=lambda: now[0])
    bad = tenant_name(1)
    weights = corrupt(repo, bad)
    with pytest.raises(IntegrityError) as e:
        loader.load(bad)
    assert f"sha256 mismatch for {weights}" in str(e.value)
    assert str(e.value).startswith(f"model {bad!r} version 1: ")
    assert e.value.status_code == 503
    loader.load(tenant_name(0))  # the others still load
    loader.load(tenant_name(2))
    now[0] = 4.9
    with pytest.raises(IntegrityError) as remembered:
        loader.check_failed(bad)
    assert remembered.value is e.value
    assert loader.stats.load_failures == 1
    corrupt(repo, bad)  # flip the byte back: the file is restored
    now[0] = 5.1
    loader.check_failed(bad)  # forgotten: the next request tries again
    assert loader.load(bad).name == bad
    assert (loader.stats.loads, loader.stats.load_failures) == (3, 1)


def test_eviction_is_counted_once(repo: ModelRepository) -> None:
    loader = loader_of(repo)
    tenant = loader.load(tenant_name(0))
    tenant.__del__()  # what Ray's LRU calls
    tenant.__del__()  # what garbage collection calls later
    assert loader.stats.evictions == 1


# --- the server's forwarding --------------------------------------------------------


class FakeHandle:
    """A DeploymentHandle stand-in: records options and the request, answers or raises."""

    def __init__(self, answer: ForwardedResponse | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[dict[str, Any], ForwardedRequest]] = []
        self._options: dict[str, Any] = {}

    def options(self, **kw: Any) -> FakeHandle:
        self._options = kw
        return self

    async def remote(self, request: ForwardedRequest) -> ForwardedResponse:
        self.calls.append((self._options, request))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def make_request(method: str, path: str, body: bytes = b"", headers: Any = ()) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "query_string": b"",
    }
    return Request(scope, receive)


@pytest.mark.anyio
async def test_forwarder_sends_the_body_to_the_family_with_the_tenant_id() -> None:
    from serve_app.config import HttpConfig

    handle = FakeHandle(ForwardedResponse(200, b'{"ok":1}', {"content-type": "application/json"}))
    fwd = TenantForwarder({"heads": "tenant-"}, HttpConfig(), handle_of=lambda _: handle)
    request = make_request(
        "POST",
        "/v2/models/tenant-0003/versions/1/infer",
        b"abc",
        [("inference-header-content-length", "3")],
    )
    response = await fwd.forward("heads", "tenant-0003", request)
    assert (response.status_code, response.body) == (200, b'{"ok":1}')
    [(options, forwarded)] = handle.calls
    assert options == {"multiplexed_model_id": "tenant-0003", "method_name": "forward"}
    assert forwarded == ForwardedRequest("tenant-0003", "infer", "1", b"abc", "3")


@pytest.mark.anyio
async def test_forwarder_refuses_an_invalid_name_without_a_hop() -> None:
    from serve_app.config import HttpConfig

    handle = FakeHandle(ForwardedResponse(200, b"", {}))
    fwd = TenantForwarder({"heads": "tenant-"}, HttpConfig(), handle_of=lambda _: handle)
    with pytest.raises(ModelNotFound) as e:
        await fwd.forward("heads", "tenant-X", make_request("GET", "/v2/models/tenant-X"))
    assert str(e.value) == "unknown model 'tenant-X': not a valid model name"
    assert handle.calls == []


@pytest.mark.anyio
async def test_forwarder_turns_an_unreachable_family_into_503() -> None:
    from serve_app.config import HttpConfig

    handle = FakeHandle(RuntimeError("deployment is deleting"))
    fwd = TenantForwarder({"heads": "tenant-"}, HttpConfig(retry_after_s=4), lambda _: handle)
    with pytest.raises(ServiceUnavailable) as e:
        await fwd.forward("heads", "tenant-0003", make_request("GET", "/v2/models/tenant-0003"))
    assert str(e.value) == (
        "model 'tenant-0003': its multiplexed family 'heads' is not available "
        "(RuntimeError: deployment is deleting)"
    )
    assert e.value.retry_after_s == 4


# --- the family replica over HTTP (Ray's LRU replaced by a plain one) -----------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


_model_id: contextvars.ContextVar[str] = contextvars.ContextVar("model_id", default="")


def plain_multiplexed(max_num_models_per_replica: int) -> Callable[..., Any]:
    """Ray's LRU semantics in a few lines: evict (calling ``__del__``) before a load."""

    def decorate(load: Callable[[str], Any]) -> Callable[[str], Any]:
        models: OrderedDict[str, Any] = OrderedDict()

        async def get(model_id: str) -> Any:
            if model_id in models:
                models.move_to_end(model_id)
                return models[model_id]
            if len(models) >= max_num_models_per_replica:
                models.popitem(last=False)[1].__del__()
            models[model_id] = await load(model_id)
            return models[model_id]

        return get

    return decorate


class Sink:
    """A ``ModelMetricsSink`` that keeps what the replica reports for one model."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, int | None]] = []
        self.batches: list[tuple[int, int]] = []  # (rows, requests waiting for it)

    def observe_request(self, status: int, latency_s: float, rows: int | None) -> None:
        assert 0 <= latency_s < 10
        self.requests.append((status, rows))

    def observe_batch(self, rows: int, queue_waits_s: Any, compute_s: float) -> None:
        assert 0 <= compute_s < 10 and all(0 <= w < 10 for w in queue_waits_s)
        self.batches.append((rows, len(list(queue_waits_s))))


@pytest.fixture
def sinks() -> dict[tuple[str, str], Sink]:
    return {}


@pytest.fixture
async def family_client(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch, sinks: dict[tuple[str, str], Sink]
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    from ray import serve

    from serve_app.server.multiplexed import MultiplexedDeployment

    monkeypatch.setattr(serve, "multiplexed", plain_multiplexed)
    monkeypatch.setattr(serve, "get_multiplexed_model_id", _model_id.get)
    args = {
        "name": "heads",
        "repository": {"root": str(repo.root)},
        "tenant_prefix": "tenant-",
        "max_models_per_replica": 2,
    }
    replica = MultiplexedDeployment.func_or_class(
        args, metrics_for=lambda model, version: sinks.setdefault((model, version), Sink())
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        _model_id.set(headers.get(b"serve_multiplexed_model_id", b"").decode())
        response = await replica(Request(scope, receive))
        await response(scope, receive, send)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, replica


def infer_body(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ]
    }


def tenant_header(t: str) -> dict[str, str]:
    return {"serve_multiplexed_model_id": t}


@pytest.mark.anyio
async def test_family_replica_serves_tenants_by_header_and_evicts(
    family_client: tuple[httpx.AsyncClient, Any], repo: ModelRepository
) -> None:
    client, replica = family_client
    x = np.random.default_rng(1).standard_normal((2, 384)).astype(np.float32)
    for i in (0, 1, 0, 2):  # 2 evicts 1 (least recently used), not 0
        t = tenant_name(i)
        r = await client.post(
            "/v2/models/heads/infer", json=infer_body(x), headers=tenant_header(t)
        )
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == t
        out = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 8)
        np.testing.assert_allclose(out, expected_output(repo, t, x), rtol=1e-4, atol=1e-5)
    stats = replica.tenant_stats()
    assert {k: stats[k] for k in ("requests", "hits", "loads", "evictions")} == {
        "requests": 4, "hits": 1, "loads": 3, "evictions": 1,
    }  # fmt: skip


@pytest.mark.anyio
async def test_family_replica_errors(
    family_client: tuple[httpx.AsyncClient, Any], repo: ModelRepository
) -> None:
    client, replica = family_client
    x = np.zeros((1, 384), np.float32)
    for i in (0, 1):  # fill the LRU (2 tenants)
        r = await client.post(
            "/v2/models/heads/infer", json=infer_body(x), headers=tenant_header(tenant_name(i))
        )
        assert r.status_code == 200
    r = await client.post("/v2/models/heads/infer", json=infer_body(x))
    assert r.status_code == 400
    assert r.json()["error"].startswith("model 'heads' is a multiplexed family: address a tenant")
    r = await client.post(
        "/v2/models/heads/infer", json=infer_body(x), headers=tenant_header("tenant-0042")
    )
    assert r.status_code == 404
    assert "unknown model 'tenant-0042': no tenant folder" in r.json()["error"]
    weights = corrupt(repo, tenant_name(2))
    r = await client.post(
        "/v2/models/heads/infer", json=infer_body(x), headers=tenant_header(tenant_name(2))
    )
    assert (r.status_code, r.headers["retry-after"]) == (503, "1")
    assert f"sha256 mismatch for {weights}" in r.json()["error"]
    r = await client.get("/v2/models/heads/ready", headers=tenant_header(tenant_name(0)))
    assert (r.status_code, r.json()) == (200, {"name": tenant_name(0), "ready": True})
    r = await client.get("/v2/models/heads/versions/2", headers=tenant_header(tenant_name(0)))
    assert (r.status_code, r.json()["error"]) == (
        404, "model 'tenant-0000' version 2 not found (serving version 1)",
    )  # fmt: skip
    stats = replica.tenant_stats()
    assert (stats["load_failures"], stats["evictions"]) == (1, 0)  # failed before the LRU
    assert replica.tenants.loaded == {tenant_name(0), tenant_name(1)}


@pytest.mark.anyio
async def test_family_replica_counts_requests_like_a_model_replica(
    family_client: tuple[httpx.AsyncClient, Any], sinks: dict[tuple[str, str], Sink]
) -> None:
    client, _ = family_client
    x = np.zeros((2, 384), np.float32)
    t = tenant_name(0)
    r = await client.post("/v2/models/heads/infer", json=infer_body(x), headers=tenant_header(t))
    assert r.status_code == 200
    r = await client.post("/v2/models/heads/infer", content=b"{", headers=tenant_header(t))
    assert r.status_code == 422
    r = await client.post(
        "/v2/models/heads/infer", json=infer_body(x), headers=tenant_header("tenant-0042")
    )
    assert r.status_code == 404
    await client.get("/v2/models/heads/ready", headers=tenant_header(t))  # not inference
    assert {k: (v.requests, v.batches) for k, v in sinks.items()} == {
        (t, "1"): ([(200, 2), (422, None)], [(2, 1)]),
        ("heads", "latest"): ([(404, None)], []),  # unknown names add no series
    }


@pytest.mark.anyio
async def test_family_replica_decodes_a_large_body_off_the_event_loop(
    family_client: tuple[httpx.AsyncClient, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import threading

    from serve_app.protocol import oip
    from serve_app.server.off_loop import DECODE_OFF_LOOP_BYTES

    client, _ = family_client
    threads: list[int] = []
    decode = oip.decode_request

    def recording_decode(*args: Any) -> oip.DecodedRequest:
        threads.append(threading.get_ident())
        return decode(*args)

    monkeypatch.setattr(oip, "decode_request", recording_decode)
    x = np.zeros((1, 384), np.float32)
    for pad_bytes in (0, DECODE_OFF_LOOP_BYTES):
        body = json.dumps(infer_body(x) | {"id": "p" * pad_bytes}).encode()
        r = await client.post(
            "/v2/models/heads/infer", content=body, headers=tenant_header(tenant_name(0))
        )
        assert r.status_code == 200, r.text
    assert threads[0] == threading.get_ident()  # small: on the loop
    assert threads[1] != threading.get_ident()  # large: in the prepare thread
