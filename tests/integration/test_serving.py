"""Real Serve, real MiniLM: every OIP endpoint, batching, user_config, bad weights, GPUs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from serve_app.deploy import progress
from tests.integration.conftest import (
    BROKEN,
    GPU_MODEL,
    STALL_S,
    SessionServe,
    binary_request,
    error_of,
    make_app_config,
)

pytestmark = pytest.mark.integration
SESSION_APPS = ["minilm", "mlp-head", BROKEN, GPU_MODEL]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ray Serve batches requests for me",
    "short",
]


def infer_body(texts: list[str], rid: str | None = None) -> dict:
    body: dict = {
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    }
    if rid is not None:
        body["id"] = rid
    return body


def wait_for(predicate, timeout_s: float = 60.0, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(interval_s)


def test_server_metadata_and_liveness(client: httpx.Client) -> None:
    r = client.get("/v2")
    assert r.status_code == 200
    assert r.json() == {
        "name": "serve_app",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    r = client.get("/v2/health/live")
    assert (r.status_code, r.json()) == (200, {"live": True})


def test_model_metadata_and_ready(client: httpx.Client) -> None:
    expected = {
        "name": "minilm",
        "versions": ["2"],
        "platform": "onnxruntime",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
    }
    for path in ("/v2/models/minilm", "/v2/models/minilm/versions/2"):
        r = client.get(path)
        assert (r.status_code, r.json()) == (200, expected)
    r = client.get("/v2/models/minilm/ready")
    assert (r.status_code, r.json()) == (200, {"name": "minilm", "ready": True})
    r = client.get("/v2/models/minilm/versions/2/ready")
    assert (r.status_code, r.json()) == (200, {"name": "minilm", "version": "2", "ready": True})
    r = client.post("/v2/models/minilm/ready")
    assert error_of(r) == (405, "POST not allowed on /v2/models/minilm/ready; use GET")


def test_unknown_model_and_version_are_404(client: httpx.Client) -> None:
    r = client.get("/v2/models/nope")
    assert r.status_code == 404
    app = make_app_config(Path("unused"), 8000)
    served = [m.name for m in app.models] + [p.name for p in app.pipelines]
    assert served[:4] == ["minilm", "mlp-head", BROKEN, GPU_MODEL] and "triage" in served
    assert error_of(r) == (404, f"unknown model 'nope'; served models: {served}")
    r = client.post("/v2/models/nope/infer", json=infer_body(["x"]))
    assert r.status_code == 404
    r = client.get("/v2/models/minilm/versions/9")
    assert r.status_code == 404
    assert error_of(r) == (404, "model 'minilm' version 9 not found (serving version 2)")
    r = client.post("/v2/models/minilm/versions/9/infer", json=infer_body(["x"]))
    assert r.status_code == 404


def test_infer_matches_in_process_model(client: httpx.Client) -> None:
    """The demo serves minilm's latest version (the ONNX export); the reference is the
    original model run in-process by sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    from serve_app.local.demo import minilm_source

    r = client.post("/v2/models/minilm/infer", json=infer_body(SENTENCES, rid="req-7"))
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "req-7"
    assert (body["model_name"], body["model_version"]) == ("minilm", "2")
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("embedding", "FP32", [3, 384])
    served = np.asarray(out["data"], dtype=np.float32).reshape(3, 384)
    reference = SentenceTransformer(str(minilm_source()), device="cpu").encode(
        SENTENCES, convert_to_numpy=True, normalize_embeddings=True
    )
    diff = float(np.abs(served - reference).max())
    print(f"served vs in-process max abs diff: {diff:.3g}")
    assert diff < 1e-5


def test_binary_extension_roundtrip(client: httpx.Client) -> None:
    text = [s.encode() for s in SENTENCES[:2]]
    content, headers = binary_request(text)
    r = client.post("/v2/models/minilm/infer", content=content, headers=headers)
    assert r.status_code == 200
    n = int(r.headers["inference-header-content-length"])
    meta = orjson.loads(r.content[:n])
    assert meta["outputs"] == [
        {
            "name": "embedding",
            "datatype": "FP32",
            "shape": [2, 384],
            "parameters": {"binary_data_size": 2 * 384 * 4},
        }
    ]
    emb = np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), [1.0, 1.0], atol=1e-5)
    json_r = client.post("/v2/models/minilm/infer", json=infer_body([s.decode() for s in text]))
    json_emb = np.asarray(json_r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 384)
    np.testing.assert_allclose(emb, json_emb, atol=1e-6)


def test_error_statuses(client: httpx.Client) -> None:
    r = client.post("/v2/models/minilm/infer", content=b"{not json")
    assert r.status_code == 422
    assert error_of(r)[1].startswith("invalid inference request: ")
    r = client.post(
        "/v2/models/minilm/infer",
        json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
    )
    assert error_of(r) == (
        400,
        "input 'text': shape [2] needs 2 elements, got 1",
    )
    r = client.post(
        "/v2/models/minilm/infer",
        json={"inputs": [{"name": "wrong", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
    )
    assert error_of(r) == (400, "missing input 'text'; got ['wrong']")
    r = client.post(
        "/v2/models/mlp-head/infer",
        json={
            "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
        },
    )
    assert error_of(r) == (
        400,
        "input 'input' must have shape [N, 384], got [1, 3]",
    )
    big = b"x" * (1024 * 1024 + 1)
    r = client.post("/v2/models/minilm/infer", content=big)
    assert r.status_code == 413
    assert error_of(r)[1] == f"request body of {len(big)} bytes exceeds the limit of 1048576"


def test_concurrent_requests_are_batched(serve_app_url: str) -> None:
    from ray import serve

    handle = serve.get_app_handle("minilm")
    before = handle.batch_stats.remote().result()

    def one(i: int) -> int:
        r = httpx.post(
            f"{serve_app_url}/v2/models/minilm/infer",
            json=infer_body([f"sentence number {i}"]),
            timeout=60,
        )
        return r.status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        codes = list(pool.map(one, range(48)))
    assert codes == [200] * 48
    after = handle.batch_stats.remote().result()
    new_sizes = after["recent_sizes"][len(before["recent_sizes"]) :]
    print(f"batch sizes under 24 concurrent clients: {new_sizes}")
    assert after["rows"] - before["rows"] == 48
    assert max(new_sizes) > 1
    assert after["batches"] - before["batches"] < 48


def test_user_config_change_applies_without_restart(
    model_root: Path, serve_app_url: str, session_serve: SessionServe
) -> None:
    from ray import serve

    port = int(serve_app_url.rsplit(":", 1)[1])
    handle = serve.get_app_handle("mlp-head")
    before = handle.batch_stats.remote().result()
    assert (before["max_batch_size"], before["batch_wait_timeout_s"]) == (8, 0.01)
    app = make_app_config(
        model_root, port, mlp_batching={"max_batch_size": 3, "batch_wait_timeout_s": 0.02}
    )
    session_serve.redeploy(app)
    after = wait_for(
        lambda: (s := handle.batch_stats.remote().result())["max_batch_size"] == 3 and s
    )
    assert after["batch_wait_timeout_s"] == 0.02
    assert after["pid"] == before["pid"], "replica was restarted"
    assert after["load_s"] == before["load_s"]


def test_corrupt_weights_keep_replica_unready(client: httpx.Client, model_root: Path) -> None:
    from ray import serve

    from serve_app.deploy.progress import state_name

    bad_file = model_root / BROKEN / "1" / "model.safetensors"
    app = serve.status().applications[BROKEN]  # the session waited for it to fail
    assert state_name(app.status) == "DEPLOY_FAILED"
    message = app.deployments["ModelDeployment"].message
    assert f"sha256 mismatch for {bad_file}" in message
    r = client.get("/v2/health/ready")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert f"sha256 mismatch for {bad_file}" in error_of(r)[1]
    r = client.get(f"/v2/models/{BROKEN}/ready")
    assert r.status_code == 503
    models = {m["name"]: m for m in client.get("/v2/models").json()["models"]}
    assert models[BROKEN]["ready"] is False
    assert models[BROKEN]["state"] == "DEPLOY_FAILED"
    assert models["minilm"] == {"name": "minilm", "ready": True, "state": "RUNNING", "reason": ""}


def test_four_quarter_gpu_replicas_fit_and_fifth_pends() -> None:
    import ray

    from serve_app.local import cluster as local

    def replica_states() -> dict[str, int]:
        # Empty while the application is still being built (no deployment listed yet).
        deployment = local.serve_snapshot()[GPU_MODEL].deployments.get("ModelDeployment")
        return dict(deployment.replica_states) if deployment is not None else {}

    # As long as replicas keep starting: a slow machine takes longer, a stuck one stops.
    progress.follow(
        replica_states,
        done=lambda s: s.get("RUNNING") == 4,
        key=lambda s: tuple(sorted(s.items())),
        stall_s=STALL_S,
        what=f"4 RUNNING replicas of {GPU_MODEL}",
    )
    time.sleep(2)
    states = replica_states()
    assert states["RUNNING"] == 4
    assert sum(states.values()) == 5
    assert ray.available_resources().get("GPU", 0.0) == 0.0
    assert ray.cluster_resources()["GPU"] == 1.0
