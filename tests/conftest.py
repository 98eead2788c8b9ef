"""Shared test settings: loopback-only Ray, and the gpu marker skipped without CUDA."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


SESSION_RAY_FIXTURE = "serve_app_url"
"""The integration session's one Ray (tests/integration/conftest.py)."""


def run_own_ray_modules_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place: modules that never use the session's Ray (unit, k8s,
    and those that start their own ``serve-app demo``) before those that do. Two local
    Rays on one machine hand out direct-ingress replica ports from the same range: in CI
    a demo's HAProxy reached a port the session's Ray had reused and got its 404
    ("unknown model 'rolling'; served models: ['minilm', ...]")."""
    uses = {item.module.__name__ for item in items if SESSION_RAY_FIXTURE in item.fixturenames}  # type: ignore[attr-defined]
    items.sort(key=lambda item: item.module.__name__ in uses)  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_own_ray_modules_first(items)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
