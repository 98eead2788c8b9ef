"""The pipeline router's cached view of which models are serving (no Ray)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from serve_app.server import node_status
from serve_app.server.node_status import NodeStatus


def test_view_is_refreshed_off_the_loop_and_turns_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Mapping[str, tuple[str, str]]] = []

    def reader(targets: Mapping[str, tuple[str, str]]) -> dict[str, str]:
        calls.append(targets)
        return {"m": "DEPLOY_FAILED: weights"}

    monkeypatch.setattr(node_status, "REFRESH_PERIOD_S", 0.01)

    async def scenario() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        status = NodeStatus({"m": ("m", "ModelDeployment")}, reader)
        first = dict(status.unserving())  # nothing read yet: trust the nodes
        await asyncio.sleep(0.1)
        second = dict(status.unserving())
        monkeypatch.setattr(node_status, "STALE_AFTER_S", 0.0)
        third = dict(status.unserving())
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first == {} and third == {}
    assert second == {"m": "DEPLOY_FAILED: weights"}
    assert calls and calls[0] == {"m": ("m", "ModelDeployment")}


def test_a_failing_reader_keeps_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    def reader(_: Mapping[str, tuple[str, str]]) -> dict[str, str]:
        raise TimeoutError("controller gone")

    monkeypatch.setattr(node_status, "REFRESH_PERIOD_S", 0.01)

    async def scenario() -> dict[str, str]:
        status = NodeStatus({"m": ("m", "ModelDeployment")}, reader)
        status.unserving()
        await asyncio.sleep(0.05)
        return status.unserving()

    assert asyncio.run(scenario()) == {}
