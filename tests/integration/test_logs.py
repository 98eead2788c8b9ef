"""Structured logs: with ``logging.encoding: JSON`` every replica writes one JSON object
per line, and a request's id (the client's ``x-request-id``) is on the lines of every
graph node it passed through."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config import load_app_config
from serve_app.graph.structure import model_nodes
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration
SESSION_APPS = ["triage"]


def serve_log_dir() -> Path:
    import ray

    return Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"


def lines_with(request_id: str) -> list[dict[str, Any]]:
    """Every replica log record carrying ``request_id``."""
    found = []
    for path in serve_log_dir().glob("replica_*.log"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if request_id in line:
                found.append(json.loads(line))  # a line that is not JSON fails here
    return found


def test_one_request_id_on_every_node_of_a_pipeline(client: httpx.Client) -> None:
    rid = f"trace-{uuid.uuid4().hex[:12]}"
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                        "data": ["the invoice was charged twice"]}]}  # fmt: skip
    r = client.post("/v2/models/triage/infer", json=body, headers={"x-request-id": rid})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid

    triage = load_app_config(ROOT / "configs/app.yaml").pipeline("triage")
    # Serve names a deployment "<application>_<deployment>" in its log records. The heads
    # are fused into minilm's replicas: their work is logged there.
    expected = {("triage", "triage_PipelineRouter")} | {
        (node.model, f"{node.model}_ModelDeployment")
        for node in model_nodes(triage)
        if not node.fused
    }
    assert expected == {
        ("triage", "triage_PipelineRouter"),
        ("minilm", "minilm_ModelDeployment"),
    }
    deadline = time.monotonic() + 15
    while True:
        records = lines_with(rid)
        seen = {(r["application"], r["deployment"]) for r in records}
        if seen >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert seen == expected
    assert {r["request_id"] for r in records} == {rid}
    assert all({"levelname", "message", "replica", "timestamp_ns"} <= r.keys() for r in records)
