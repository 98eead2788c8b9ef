"""A multiplexed family on the session's Ray (HAProxy ingress): tenants addressed by OIP
model name (through the server's catch-all and a handle) and by the
``serve_multiplexed_model_id`` header; first request loads, Ray's LRU evicts, unknown
tenants are 404, a corrupt tenant fails alone.

The family has one replica holding two tenants (tests/integration/conftest.py), so the
counts each test reads are exact. The last test runs ``serve-app demo`` with two replicas
and ``http.haproxy_balance: tenant-header``: HAProxy keeps each tenant on one replica."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from serve_app.local.demo import MLP_HEAD_ARCH
from serve_app.models.architectures import ARCHITECTURES
from tests.integration.conftest import TENANTS, error_of

pytestmark = pytest.mark.integration
SESSION_APPS = [TENANTS]

X = np.random.default_rng(7).standard_normal((2, 384)).astype(np.float32)
BODY = {"inputs": [{"name": "input", "shape": [2, 384], "datatype": "FP32", "data": X.tolist()}]}


def stats() -> dict[str, Any]:
    from ray import serve

    result: dict[str, Any] = serve.get_app_handle(TENANTS).tenant_stats.remote().result()
    return result


def expected(model_root: Path, tenant: str) -> np.ndarray:
    module = ARCHITECTURES["mlp"](**MLP_HEAD_ARCH.kwargs)
    module.load_state_dict(load_file(str(model_root / tenant / "1" / "model.safetensors")))
    with torch.inference_mode():
        return module(torch.from_numpy(X)).numpy()


def output_of(r: httpx.Response, tenant: str) -> np.ndarray:
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"]) == (tenant, "1")
    return np.asarray(body["outputs"][0]["data"], np.float32).reshape(2, 8)


def by_name(client: httpx.Client, tenant: str) -> httpx.Response:
    return client.post(f"/v2/models/{tenant}/infer", json=BODY)


def by_header(client: httpx.Client, tenant: str) -> httpx.Response:
    return client.post(
        f"/v2/models/{TENANTS}/infer", json=BODY, headers={"serve_multiplexed_model_id": tenant}
    )


def test_first_request_loads_the_tenant_then_hits(client: httpx.Client, model_root: Path) -> None:
    tenant = "tenant-0000"
    evict_it = [t for t in ("tenant-0001", "tenant-0002")]
    for t in evict_it:  # make sure tenant-0000 is cold: two others fill the LRU
        output_of(by_name(client, t), t)
    before = stats()
    assert tenant not in before["loaded"]
    out = output_of(by_name(client, tenant), tenant)
    np.testing.assert_allclose(out, expected(model_root, tenant), rtol=1e-4, atol=1e-5)
    cold = stats()
    assert (cold["loads"] - before["loads"], cold["hits"] - before["hits"]) == (1, 0)
    assert cold["recent_load_s"][-1][0] == tenant
    out = output_of(by_header(client, tenant), tenant)  # the other address, same replica
    np.testing.assert_allclose(out, expected(model_root, tenant), rtol=1e-4, atol=1e-5)
    warm = stats()
    assert (warm["loads"] - cold["loads"], warm["hits"] - cold["hits"]) == (0, 1)
    assert not np.allclose(expected(model_root, "tenant-0001"), out)


def test_lru_evicts_the_least_recently_used_tenant(client: httpx.Client) -> None:
    for t in ("tenant-0000", "tenant-0001", "tenant-0000"):
        output_of(by_name(client, t), t)
    before = stats()
    assert sorted(before["loaded"]) == ["tenant-0000", "tenant-0001"]
    output_of(by_name(client, "tenant-0002"), "tenant-0002")  # evicts tenant-0001
    after = stats()
    assert after["loaded"] == ["tenant-0000", "tenant-0002"]
    assert (after["evictions"] - before["evictions"], after["loads"] - before["loads"]) == (1, 1)
    output_of(by_name(client, "tenant-0001"), "tenant-0001")  # loads again
    assert stats()["loads"] - after["loads"] == 1


def test_unknown_tenant_is_404_naming_it(client: httpx.Client, model_root: Path) -> None:
    folder = model_root / "tenant-0042"
    message = (
        f"unknown model 'tenant-0042': no tenant folder {folder} for the multiplexed "
        f"family {TENANTS!r}"
    )
    assert error_of(by_name(client, "tenant-0042")) == (404, message)
    assert error_of(by_header(client, "tenant-0042")) == (404, message)
    assert error_of(client.get("/v2/models/tenant-0042/ready")) == (404, message)
    r = client.post(f"/v2/models/{TENANTS}/infer", json=BODY)
    assert error_of(r)[0] == 400
    assert error_of(r)[1].startswith(f"model {TENANTS!r} is a multiplexed family")


def test_corrupt_tenant_fails_alone(client: httpx.Client, model_root: Path) -> None:
    for t in ("tenant-0000", "tenant-0001"):
        output_of(by_name(client, t), t)
    before = stats()
    bad = model_root / "tenant-0003" / "1" / "model.safetensors"
    for request in (by_name, by_header, by_name):
        r = request(client, "tenant-0003")
        status, message = error_of(r)
        assert (status, r.headers["retry-after"]) == (503, "1")
        assert message.startswith("model 'tenant-0003' version 1: sha256 mismatch for ")
        assert str(bad) in message
    after = stats()
    assert after["loaded"] == before["loaded"] and after["evictions"] == before["evictions"]
    for t in ("tenant-0000", "tenant-0001"):  # the others keep working, still loaded
        output_of(by_name(client, t), t)
    assert stats()["loads"] == before["loads"]


def test_tenant_metadata_and_ready_through_the_server(client: httpx.Client) -> None:
    r = client.get("/v2/models/tenant-0002")
    assert r.status_code == 200
    meta = r.json()
    assert (meta["name"], meta["versions"], meta["platform"]) == (
        "tenant-0002", ["1"], "numpy_safetensors",  # a CPU mlp head runs on numpy
    )  # fmt: skip
    r = client.get("/v2/models/tenant-0002/versions/1/ready")
    assert (r.status_code, r.json()) == (
        200,
        {"name": "tenant-0002", "version": "1", "ready": True},
    )
    r = client.get("/v2/models/tenant-0002/versions/7")
    assert error_of(r) == (404, "model 'tenant-0002' version 7 not found (serving version 1)")
