"""The server package over HTTP on CPU, without Ray: the real ``ModelDeployment`` and
``OIPServer`` classes (Serve's decorators peeled off) around a stand-in model, driven
through an ASGI client. Covers routing, every error status, the masked 500 with Serve's
request id, ``Retry-After`` and ``Allow``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from starlette.requests import Request

from serve_app.errors import InvalidInput, ServiceUnavailable
from serve_app.models.base import ModelAdapter, ModelInfo, TensorSpec
from serve_app.repository import publish
from serve_app.repository.loader import VerifiedVersion
from serve_app.repository.manifest import Architecture
from serve_app.server.model_deployment import ModelDeployment
from serve_app.server.oip_server import ModelState, OIPServer

pytestmark = pytest.mark.anyio

BOOM = -7.0
"""An input value on which the stand-in model raises an unexpected error."""
BUSY = -8.0
"""An input value on which the stand-in model says it is overloaded."""


class DoublingAdapter(ModelAdapter):
    """``y = 2 x`` on FP32 rows of width 2."""

    def __init__(self) -> None:
        self.info = ModelInfo(
            "stand-in",
            [TensorSpec("x", "FP32", (-1, 2))],
            [TensorSpec("y", "FP32", (-1, 2))],
            "cpu",
        )

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        from serve_app.errors import InvalidInput

        x = inputs["x"]
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 2:
            raise InvalidInput(f"input 'x' must be FP32 [N, 2], got {x.dtype} {list(x.shape)}")
        return list(x)

    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        if any(row[0] == BOOM for row in items):
            raise RuntimeError("secret internal detail")
        if any(row[0] == BUSY for row in items):
            raise ServiceUnavailable("stand-in is overloaded", 7)
        return {"y": np.stack(items) * 2}

    def warmup_items(self, n: int) -> list[Any]:
        return [np.zeros(2, np.float32)] * n


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def asgi(handler: Callable[[Request], Any]) -> Callable[..., Any]:
    """An ASGI app that hands every request to ``handler(request)`` (what Serve's
    ``__call__`` entry point does)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = await handler(Request(scope, receive))
        await response(scope, receive, send)

    return app


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    weights = root / "w.safetensors"
    save_file({"w": torch.zeros(1)}, str(weights))
    publish(weights, root / "models", "double", architecture=Architecture(name="mlp"))
    return root / "models"


class ReplicaContext:
    """What ``@serve.batch`` reads from Serve's replica context (a warning check)."""

    class _deployment_config:  # noqa: N801 - mirrors Serve's attribute name
        max_ongoing_requests = 64


class Recorder:
    """A ``ModelMetricsSink`` that keeps what the replica reports."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, int | None]] = []
        self.vias: list[str] = []  # how each request came
        self.batches: list[tuple[int, int]] = []  # (rows, requests waiting for it)
        self.waits_s: list[float] = []
        self.loaded: tuple[dict[str, str], set[str], int] | None = None

    def observe_request(
        self, status: int, latency_s: float, rows: int | None, via: str = "http"
    ) -> None:
        assert 0 <= latency_s < 10
        self.requests.append((status, rows))
        self.vias.append(via)

    def observe_batch(self, rows: int, queue_waits_s: Any, compute_s: float) -> None:
        waits = list(queue_waits_s)
        assert 0 <= compute_s < 10
        self.batches.append((rows, len(waits)))
        self.waits_s += waits

    def set_loaded(self, info: dict[str, str], load_s: dict[str, float], nbytes: int) -> None:
        self.loaded = (info, set(load_s), nbytes)

    def set_device_memory(self, nbytes: int) -> None:
        raise AssertionError("no device memory on CPU")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def model_client(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> AsyncIterator[httpx.AsyncClient]:
    from ray import serve

    monkeypatch.setattr(serve, "get_replica_context", ReplicaContext)

    def loader(_: VerifiedVersion, __: str) -> ModelAdapter:
        return DoublingAdapter()

    args = {
        "name": "double",
        "repository": {"root": str(repo)},
        "http": {"max_request_bytes": 4096, "retry_after_s": 3},
        "torch_threads": torch.get_num_threads(),
    }
    replica = ModelDeployment.func_or_class(args, adapter_loader=loader, metrics=recorder)
    replica.reconfigure({"max_batch_size": 8, "cap_batch_to_memory": False})
    transport = httpx.ASGITransport(app=asgi(replica.__call__))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


def infer_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(rows), 2], "datatype": "FP32", "data": rows}]}


def error_of(r: httpx.Response) -> str:
    """The message of an error body, after checking its exact shape."""
    body = r.json()
    assert set(body) == {"error", "request_id"}, body
    assert len(body["request_id"]) >= 16
    return str(body["error"])


async def test_routes_answer_metadata_ready_and_infer(model_client: httpx.AsyncClient) -> None:
    meta = (await model_client.get("/v2/models/double")).json()
    assert meta == {
        "name": "double",
        "versions": ["1"],
        "platform": "stand-in",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }
    r = await model_client.get("/v2/models/double/versions/1/ready")
    assert (r.status_code, r.json()) == (200, {"name": "double", "ready": True, "version": "1"})
    r = await model_client.post("/v2/models/double/infer", json=infer_body([[1, 2], [3, 4]]))
    assert r.status_code == 200
    assert r.json()["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [2.0, 4.0, 6.0, 8.0]}
    ]


async def test_concurrent_requests_are_batched_and_split_back(
    model_client: httpx.AsyncClient,
) -> None:
    bodies = [infer_body([[float(i), 0.0]]) for i in range(6)]
    answers = await asyncio.gather(
        *(model_client.post("/v2/models/double/infer", json=b) for b in bodies)
    )
    assert [a.json()["outputs"][0]["data"] for a in answers] == [[2.0 * i, 0.0] for i in range(6)]


async def test_a_lone_batch_is_cut_across_idle_forwards_and_counted_once(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    from ray import serve

    monkeypatch.setattr(serve, "get_replica_context", ReplicaContext)
    chunks: list[int] = []

    class Recording(DoublingAdapter):
        def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
            chunks.append(len(items))
            return super().forward(items)

    args = {"name": "double", "repository": {"root": str(repo)}, "torch_threads": 1}
    replica = ModelDeployment.func_or_class(
        args, adapter_loader=lambda _, __: Recording(), metrics=recorder
    )
    replica.reconfigure(
        {"max_batch_size": 8, "max_concurrent_batches": 2, "split_min_rows": 2,
         "cap_batch_to_memory": False}
    )  # fmt: skip
    before = replica.batch_stats()
    chunks.clear()  # the warm-up's forward
    transport = httpx.ASGITransport(app=asgi(replica.__call__))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        rows = [[float(i), 1.0] for i in range(8)]
        r = await client.post("/v2/models/double/infer", json=infer_body(rows))
    assert r.status_code == 200
    assert r.json()["outputs"][0]["data"] == [2.0 * v for row in rows for v in row]
    assert chunks == [4, 4]
    after = replica.batch_stats()
    assert (after["batches"] - before["batches"], after["rows"] - before["rows"]) == (1, 8)
    assert after["forwards"] - before["forwards"] == 2
    assert recorder.batches[-1] == (8, 1)  # one batch of 8 rows, one request waited


async def test_metrics_count_requests_rows_batches_and_waits(
    model_client: httpx.AsyncClient, recorder: Recorder, repo: Path
) -> None:
    info, load_keys, nbytes = recorder.loaded
    assert info == {"format": "safetensors", "device": "cpu", "num_gpus": "0"}
    assert load_keys == {"verify_s", "load_s", "warmup_s"}
    assert nbytes == sum(p.stat().st_size for p in (repo / "double" / "1").iterdir()) - (
        (repo / "double" / "1" / "manifest.json").stat().st_size
    )
    bodies = [infer_body([[float(i), 0.0]] * (1 + i % 2)) for i in range(6)]
    await asyncio.gather(*(model_client.post("/v2/models/double/infer", json=b) for b in bodies))
    await model_client.post("/v2/models/double/infer", content=b"{not json")
    await model_client.get("/v2/models/double")  # metadata: not an inference request

    assert sorted(recorder.requests, key=str) == sorted(
        [(200, 1), (200, 2)] * 3 + [(422, None)], key=str
    )
    assert sum(rows for rows, _ in recorder.batches) == 9
    assert sum(n for _, n in recorder.batches) == 6 == len(recorder.waits_s)
    assert len(recorder.batches) < 6  # concurrent requests shared batches
    assert all(0 <= w < 5 for w in recorder.waits_s)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v2/models/double/nope", None, 404, "no route for /v2/models/double/nope"),
        ("GET", "/v2/models/double/versions", None, 404, "no route for /v2/models/double/versions"),
        (
            "GET",
            "/v2/models/double/versions/9/ready",
            None,
            404,
            "model 'double' version 9 not found (serving version 1)",
        ),
        (
            "POST",
            "/v2/models/double/infer",
            b"{not json",
            422,
            "invalid inference request: ",
        ),
        (
            "POST",
            "/v2/models/double/infer",
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
            ).encode(),
            400,
            "input 'x' must be FP32 [N, 2], got float32 [1, 3]",
        ),
        (
            "POST",
            "/v2/models/double/infer",
            b"x" * 5000,
            413,
            "request body of 5000 bytes exceeds the limit of 4096",
        ),
    ],
)
async def test_each_client_error_has_its_status_and_a_message(
    model_client: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    message: str,
) -> None:
    r = await model_client.request(method, path, content=body)
    assert r.status_code == status
    assert error_of(r).startswith(message), r.json()


async def test_a_wrong_method_is_405_with_allow(model_client: httpx.AsyncClient) -> None:
    r = await model_client.post("/v2/models/double/ready")
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
    assert error_of(r) == "POST not allowed on /v2/models/double/ready; use GET"
    r = await model_client.get("/v2/models/double/infer")
    assert (r.status_code, r.headers["allow"]) == (405, "POST")


async def test_an_unexpected_error_is_a_masked_500_naming_the_request_id(
    model_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    r = await model_client.post("/v2/models/double/infer", json=infer_body([[BOOM, 0]]))
    assert r.status_code == 500
    request_id = r.json()["request_id"]
    assert error_of(r) == f"internal error, request id {request_id}"
    assert "secret" not in r.text
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])
    # The replica keeps serving.
    r = await model_client.post("/v2/models/double/infer", json=infer_body([[1, 1]]))
    assert r.status_code == 200


async def test_serve_request_id_is_the_one_in_the_body(
    model_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.serve import context

    serve_context = context._RequestContext(request_id="req-from-the-proxy-0001")
    monkeypatch.setattr(context, "_get_serve_request_context", lambda: serve_context)
    r = await model_client.post("/v2/models/double/infer", json=infer_body([[BOOM, 0]]))
    assert r.json() == {
        "error": "internal error, request id req-from-the-proxy-0001",
        "request_id": "req-from-the-proxy-0001",
    }


async def test_overload_is_503_with_retry_after(model_client: httpx.AsyncClient) -> None:
    r = await model_client.post("/v2/models/double/infer", json=infer_body([[BUSY, 0]]))
    assert (r.status_code, r.headers["retry-after"]) == (503, "7")
    assert error_of(r) == "stand-in is overloaded"


# --- OIPServer ----------------------------------------------------------------------


class States:
    """A stand-in controller: answers what ``self.states`` holds, or hangs/raises."""

    def __init__(self) -> None:
        self.states = {
            "double": ModelState("double", True, "RUNNING", ""),
            "sick": ModelState("sick", False, "DEPLOY_FAILED", "sha256 mismatch for w.bin"),
        }
        self.fail = False

    def __call__(self, names: list[str]) -> dict[str, ModelState]:
        if self.fail:
            raise RuntimeError("controller gone")
        return {n: self.states[n] for n in names}


@pytest.fixture
async def server() -> AsyncIterator[tuple[httpx.AsyncClient, States, Any]]:
    states = States()
    args = {"models": ["double", "sick"], "http": {"retry_after_s": 4}}
    from serve_app.server.oip_server import server_api

    # serve.ingress wraps the class in an ASGI wrapper that needs a replica; its first
    # base is the class as written.
    server_class = OIPServer.func_or_class.__bases__[0]
    assert server_class.__name__ == "OIPServer"
    replica = server_class(args, state_reader=states)
    # The routes' ``self`` is a FastAPI dependency that Serve resolves to the replica's
    # instance; override it with ours, and the real app runs its real routes.
    server_api.dependency_overrides[servable_instance_dependency(server_api)] = lambda: replica
    transport = httpx.ASGITransport(app=server_api)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, states, replica
    finally:
        server_api.dependency_overrides.clear()


def servable_instance_dependency(api: Any) -> Any:
    """The dependency ``serve.ingress`` put as the default of every route's ``self``."""
    import inspect

    from ray.serve._private.http_util import _walk_fastapi_routes

    for route, _, _ in _walk_fastapi_routes(api):
        if getattr(route.endpoint, "_serve_cls", None) is not None:
            return inspect.signature(route.endpoint).parameters["self"].default.dependency
    raise AssertionError("no class-based route in the app")


async def test_live_answers_and_ready_names_the_model_that_is_not(
    server: tuple[httpx.AsyncClient, States, Any],
) -> None:
    client, states, _ = server
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    r = await client.get("/v2/health/ready")
    assert (r.status_code, r.headers["retry-after"]) == (503, "4")
    assert error_of(r) == "not ready: sick: DEPLOY_FAILED sha256 mismatch for w.bin"
    states.states["sick"] = ModelState("sick", True, "RUNNING", "")
    deadline = time.monotonic() + 5
    while (r := await client.get("/v2/health/ready")).status_code != 200:
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.1)
    assert r.json() == {"ready": True}


async def test_unknown_model_is_404_and_a_down_model_503(
    server: tuple[httpx.AsyncClient, States, Any],
) -> None:
    client, _, _ = server
    r = await client.post("/v2/models/nope/infer")
    assert r.status_code == 404
    assert error_of(r) == "unknown model 'nope'; served models: ['double', 'sick']"
    r = await client.get("/v2/models/sick/ready")
    assert (r.status_code, r.headers["retry-after"]) == (503, "4")
    assert error_of(r) == ("model 'sick' is not ready (DEPLOY_FAILED: sha256 mismatch for w.bin)")


async def test_ready_is_503_state_unknown_when_the_controller_never_answered(
    server: tuple[httpx.AsyncClient, States, Any],
) -> None:
    client, states, _ = server
    states.fail = True
    r = await client.get("/v2/health/ready")
    assert (r.status_code, r.headers["retry-after"]) == (503, "4")
    assert error_of(r) == "state unknown: the Serve controller has never answered"
    assert (await client.get("/v2/health/live")).status_code == 200


# --- large bodies (issue 27) ----------------------------------------------------------


def new_replica(
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    recorder: Recorder,
    http: dict[str, Any],
    adapter: Callable[[], ModelAdapter] = DoublingAdapter,
    **options: Any,
) -> Any:
    """A ``double`` replica with these ``http`` settings (``options``: the deployment's
    other injectables)."""
    from ray import serve

    monkeypatch.setattr(serve, "get_replica_context", ReplicaContext)
    args = {
        "name": "double",
        "repository": {"root": str(repo)},
        "http": http,
        "torch_threads": torch.get_num_threads(),
    }
    replica = ModelDeployment.func_or_class(
        args, adapter_loader=lambda _, __: adapter(), metrics=recorder, **options
    )
    replica.reconfigure({"max_batch_size": 8, "cap_batch_to_memory": False})
    return replica


def padded_body(rows: int, pad_bytes: int) -> bytes:
    """An inference body of ``rows`` rows whose id makes it ``pad_bytes`` longer."""
    return json.dumps(infer_body([[1.0, 2.0]] * rows) | {"id": "p" * pad_bytes}).encode()


async def test_a_large_body_is_decoded_and_prepared_off_the_event_loop(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    import threading

    from serve_app.protocol import oip
    from serve_app.server.off_loop import DECODE_OFF_LOOP_BYTES

    replica = new_replica(repo, monkeypatch, recorder, {"max_request_bytes": 2**20})
    threads: list[int] = []
    decode = oip.decode_request

    def recording_decode(*args: Any) -> oip.DecodedRequest:
        threads.append(threading.get_ident())
        return decode(*args)

    monkeypatch.setattr(oip, "decode_request", recording_decode)
    transport = httpx.ASGITransport(app=asgi(replica.__call__))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for pad_bytes in (0, DECODE_OFF_LOOP_BYTES):
            r = await client.post("/v2/models/double/infer", content=padded_body(2, pad_bytes))
            assert (r.status_code, r.json()["outputs"][0]["data"]) == (200, [2.0, 4.0] * 2)
    assert threads[0] == threading.get_ident()  # small: on the loop
    assert threads[1] != threading.get_ident()  # large: in the prepare thread


class SlowDoublingAdapter(DoublingAdapter):
    """``DoublingAdapter`` whose forward takes 0.3 s, so requests overlap."""

    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        time.sleep(0.3)
        return super().forward(items)


async def test_bytes_in_flight_stay_within_the_budget_and_the_rest_get_503(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    import re

    budget = 3 * 65536
    http = {
        "max_request_bytes": 65536,
        "limits": {"max_decoded_bytes": 65536},
        "max_in_flight_bytes": budget,
        "retry_after_s": 3,
    }
    replica = new_replica(repo, monkeypatch, recorder, http, SlowDoublingAdapter)
    body = padded_body(2, 60_000)  # 3 fit in the budget, a 4th does not
    transport = httpx.ASGITransport(app=asgi(replica.__call__))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answers = await asyncio.gather(
            *(client.post("/v2/models/double/infer", content=body) for _ in range(8))
        )
        assert sorted(r.status_code for r in answers) == [200] * 3 + [503] * 5
        for r in (r for r in answers if r.status_code == 503):
            assert r.headers["retry-after"] == "3"
            assert re.fullmatch(
                # 3 bodies held; decoded (16 bytes each) or not yet
                rf"replica busy: (?:{3 * len(body)}|{3 * len(body) + 48}) bytes of requests "
                rf"in flight, {len(body)} more would pass its budget of {budget} "
                r"\(http.max_in_flight_bytes\)",
                error_of(r),
            ), error_of(r)
        assert replica.in_flight.peak_bytes <= budget
        assert replica.in_flight.in_flight_bytes == 0  # all released
        r = await client.post("/v2/models/double/infer", content=b"{")  # an error releases too
        assert r.status_code == 422 and replica.in_flight.in_flight_bytes == 0
        r = await client.post("/v2/models/double/infer", content=body)
        assert r.status_code == 200


async def test_a_cancelled_request_releases_its_bytes(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    http = {"max_request_bytes": 65536, "limits": {"max_decoded_bytes": 65536}}
    replica = new_replica(repo, monkeypatch, recorder, http, SlowDoublingAdapter)
    body = padded_body(2, 1000)
    task = asyncio.create_task(replica.answer_body(body, None))
    await asyncio.sleep(0.1)  # in its forward
    assert replica.in_flight.in_flight_bytes == len(body) + 16
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert replica.in_flight.in_flight_bytes == 0
    assert (recorder.requests, recorder.vias) == ([(499, 2)], ["job"])


class RefusingCanary:
    """The canary application's handle when Serve has no replica for it."""

    def remote(self, tensors: dict[str, np.ndarray], rename: dict[str, str], *, via: str) -> Any:
        from ray.serve._private.common import DeploymentID
        from ray.serve.exceptions import DeploymentUnavailableError

        raise DeploymentUnavailableError(DeploymentID(name="ModelDeployment", app_name="c"))


async def test_a_refused_canary_request_is_answered_by_the_replica_itself(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    apps: list[str] = []

    def canary_handles(app: str) -> RefusingCanary:
        apps.append(app)
        return RefusingCanary()

    replica = new_replica(repo, monkeypatch, recorder, {}, canary_handles=canary_handles)
    canary = {"app": "double.canary", "version": 2, "percent": 100}
    replica.reconfigure({"max_batch_size": 8, "cap_batch_to_memory": False, "canary": canary})
    transport = httpx.ASGITransport(app=asgi(replica.__call__))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/v2/models/double/infer", json=infer_body([[1, 2]]))
    assert (r.status_code, r.json()["model_version"]) == (200, "1")
    assert r.json()["outputs"][0]["data"] == [2.0, 4.0]
    assert apps == ["double.canary"]
    # the fallback counted as the stable's own request, not as a pipeline's call
    assert (recorder.requests, recorder.vias) == ([(200, 1)], ["http"])


async def test_a_pipelines_calls_are_counted_apart_from_the_models_own_requests(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    replica = new_replica(repo, monkeypatch, recorder, {})
    x = np.array([[1.0, 2.0]], np.float32)
    transport = httpx.ASGITransport(app=asgi(replica.__call__))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/v2/models/double/infer", json=infer_body([[1, 2]]))
        assert r.status_code == 200
    # As the pipeline router calls a model node (HandleBackend, LocalBackend, coalescer).
    outputs = await replica.infer_tensors({"a": x}, {"x": "a"}, None)
    assert outputs["y"].tolist() == [[2.0, 4.0]]
    with pytest.raises(InvalidInput):
        await replica.infer_tensors({}, {"x": "a"}, None)
    status, _, _ = await replica.answer_body(json.dumps(infer_body([[1, 2]])).encode(), None)
    assert status == 200
    assert recorder.requests == [(200, 1), (200, 1), (400, None), (200, 1)]
    assert recorder.vias == ["http", "pipeline", "pipeline", "job"]


def http_scope(path: str = "/v2/models/double/infer") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }


async def test_a_client_gone_while_sending_its_body_is_counted_as_499(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    replica = new_replica(repo, monkeypatch, recorder, {})
    # What an ASGI server hands the app when the client hangs up mid-body.
    messages = [
        {"type": "http.request", "body": b'{"inputs": [', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi(replica.__call__)(http_scope(), receive, send)
    assert sent[0]["status"] == 499
    assert json.loads(sent[1]["body"])["error"] == (
        "client disconnected after 12 bytes of the request body"
    )
    assert (recorder.requests, recorder.vias) == ([(499, None)], ["http"])
    assert replica.in_flight.in_flight_bytes == 0


async def test_a_request_cancelled_in_its_forward_is_counted_as_499(
    repo: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    # Serve cancels the replica's request when its client disconnects.
    replica = new_replica(repo, monkeypatch, recorder, {}, SlowDoublingAdapter)
    body = json.dumps(infer_body([[1, 2], [3, 4]])).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    task = asyncio.create_task(replica.__call__(Request(http_scope(), receive)))
    await asyncio.sleep(0.1)  # in its forward
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    x = np.array([[1.0, 2.0]], np.float32)
    call = asyncio.create_task(replica.infer_tensors({"x": x}, {"x": "x"}, None))
    await asyncio.sleep(0.1)  # a pipeline's node call, cancelled by the pipeline
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (recorder.requests, recorder.vias) == ([(499, 2), (499, 1)], ["http", "pipeline"])
    assert replica.in_flight.in_flight_bytes == 0
