"""A demo's start: ports held by others fail it at once, naming the process; HAProxy of a
killed demo is found by its command line and ended; the wrapper's HAProxy dies with the
process that started it (no Ray)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from serve_app.config import AppConfig
from serve_app.local.ingress import write_wrapper
from serve_app.local.ports import (
    Holder,
    PortInUse,
    check_ports_free,
    demo_ports,
    end_stale_haproxies,
    holders,
    is_our_haproxy,
)


def listener(ip: str, port: int, pid: int | None, status: str = "LISTEN") -> SimpleNamespace:
    return SimpleNamespace(status=status, laddr=SimpleNamespace(ip=ip, port=port), pid=pid)


def test_a_held_port_fails_the_start_naming_port_setting_and_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUse) as info:
            check_ports_free({port: "http.port", port + 1: "grpc.port"}, "127.0.0.1")
    name = psutil.Process().name()
    assert str(info.value) == (
        f"port {port} (http.port) is in use by pid {os.getpid()} ({name}): stop it, or "
        "choose another port in the config"
    )
    assert info.value.holders == [Holder(port, os.getpid(), name)]


def test_only_listeners_that_collide_with_the_host_count() -> None:
    connections = [
        listener("127.0.0.1", 8000, 10),
        listener("0.0.0.0", 8404, 11),  # a wildcard collides with any host
        listener("10.1.2.3", 9101, 12),  # another address: no collision with loopback
        listener("127.0.0.1", 9000, 13, status="ESTABLISHED"),
        listener("127.0.0.1", 9000, None),  # another user's: pid unknown
    ]
    found = holders(
        [8000, 8404, 9101, 9000], "127.0.0.1", lambda: connections, lambda pid: f"p{pid}"
    )
    assert found == [
        Holder(8000, 10, "p10"),
        Holder(8404, 11, "p11"),
        Holder(9000, None, "pNone"),
    ]
    with pytest.raises(PortInUse) as info:
        check_ports_free({9000: "grpc.port"}, "127.0.0.1", lambda: connections, str)
    assert str(info.value) == (
        "port 9000 (grpc.port) is in use by a process of another user (run `sudo ss -ltnp` "
        "to name it): stop it, or choose another port in the config"
    )
    # A demo that binds every interface collides with a listener on any address.
    assert [h.port for h in holders([9101], "0.0.0.0", lambda: connections, str)] == [9101]


def test_demo_ports_name_their_settings() -> None:
    app = AppConfig.model_validate(
        {
            "repository": {"root": "/tmp/r"},
            "http": {"port": 8100, "admin_ports": [8405, 9102]},
            "grpc": {"enabled": True, "port": 9001},
            "models": [{"name": "m"}],
        }
    )
    assert demo_ports(app, dashboard_port=8265) == {
        8100: "http.port",
        8405: "http.admin_ports[0] (HAProxy stats)",
        9102: "http.admin_ports[1] (HAProxy metrics)",
        9001: "grpc.port",
        8265: "--dashboard-port",
    }
    proxy = app.model_copy(update={"http": app.http.model_copy(update={"ingress": "proxy"})})
    assert demo_ports(proxy) == {8100: "http.port", 9001: "grpc.port"}


def test_our_haproxy_is_known_by_the_wrappers_path(tmp_path: Path) -> None:
    assert is_our_haproxy([str(tmp_path / "haproxy-127.0.0.1.sh"), "-db"], tmp_path)
    assert not is_our_haproxy(["/usr/sbin/haproxy", "-db"], tmp_path)
    assert not is_our_haproxy([str(tmp_path / "other.sh")], tmp_path)
    assert not is_our_haproxy([], tmp_path)


LISTENER = (
    "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n"
    "print(s.getsockname()[1], flush=True)\ntime.sleep(120)\n"
)
"""What the stand-in 'HAProxy' (this Python, an ELF binary that keeps the ``argv[0]`` it
is given, which a script with a shebang would not) runs: listen, print the port."""


def fake_haproxy(tmp_path: Path) -> Path:
    return write_wrapper("127.0.0.1", binary=sys.executable, directory=str(tmp_path))


def start_under_parent(wrapper: Path) -> tuple[subprocess.Popen[str], int, int]:
    """Start the wrapper from a parent process (as Ray's actor does); returns the parent,
    the HAProxy's pid and its port."""
    parent_code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)\n"
        "print(p.pid, p.stdout.readline().strip(), flush=True)\n"
        "p.wait()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code, str(wrapper), "-c", LISTENER],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pid, port = map(int, parent.stdout.readline().split())
    return parent, pid, port


def gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_the_wrappers_haproxy_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    wrapper = fake_haproxy(tmp_path)
    parent, pid, _port = start_under_parent(wrapper)
    try:
        assert psutil.Process(pid).cmdline()[:2] == [str(wrapper), "-c"]
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        assert gone_within(pid, 5.0)
    finally:
        parent.kill()
        parent.wait(5)
        if not gone_within(pid, 0):
            os.kill(pid, signal.SIGKILL)


def test_a_stale_haproxy_is_ended_and_named(tmp_path: Path) -> None:
    """A HAProxy with no Ray node above it (its parent here is a plain process) is
    stale; the pdeathsig is not what ends it here: its parent stays alive."""
    wrapper = fake_haproxy(tmp_path)
    parent, pid, port = start_under_parent(wrapper)
    said: list[str] = []
    try:
        assert end_stale_haproxies(said.append, folder=wrapper.parent) == [pid]
        assert said == [
            f"ending pid {pid}: a HAProxy a previous demo left running (ports [{port}])"
        ]
        assert gone_within(pid, 5.0)
        assert end_stale_haproxies(said.append, folder=wrapper.parent) == []
    finally:
        parent.kill()
        parent.wait(5)
