"""The batch memory budget reads the container's limit, not the node's free memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.server.memory import cgroup_available_bytes, free_memory_bytes


def test_cgroup_v2_limit_minus_usage(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("4294967296\n")
    (tmp_path / "memory.current").write_text("1073741824\n")
    assert cgroup_available_bytes(tmp_path) == 3 * 2**30
    assert free_memory_bytes("cpu", cgroup_root=tmp_path) <= 3 * 2**30


def test_cgroup_v2_without_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("5\n")
    assert cgroup_available_bytes(tmp_path) is None


def test_cgroup_v1_limit_and_its_unlimited_marker(tmp_path: Path) -> None:
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("2147483648\n")
    (v1 / "memory.usage_in_bytes").write_text("2147483000\n")
    assert cgroup_available_bytes(tmp_path) == 648
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_available_bytes(tmp_path) is None


def test_no_cgroup_files_means_host_memory(tmp_path: Path) -> None:
    import psutil

    assert cgroup_available_bytes(tmp_path) is None
    assert free_memory_bytes("cpu", cgroup_root=tmp_path) > 0
    assert free_memory_bytes("cpu", cgroup_root=tmp_path) <= psutil.virtual_memory().total


def test_the_in_flight_budget_is_a_quarter_of_free_memory_and_fits_one_request() -> None:
    from serve_app.config import HttpConfig
    from serve_app.server.memory import in_flight_budget_bytes

    assert in_flight_budget_bytes(None, 80 << 20, available_bytes=2 << 30) == 512 << 20
    assert in_flight_budget_bytes(None, 80 << 20, available_bytes=100 << 20) == 80 << 20
    assert in_flight_budget_bytes(123 << 20, 80 << 20, available_bytes=2 << 30) == 123 << 20
    with pytest.raises(ValueError) as e:
        HttpConfig(max_in_flight_bytes=2048)
    assert (
        "http.max_in_flight_bytes 2048 is below one request's worth (83886080: "
        "max_request_bytes + limits.max_decoded_bytes): the largest request would be "
        "refused 503 forever"
    ) in str(e.value)
