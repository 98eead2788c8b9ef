"""Before a local Ray starts: end HAProxy processes that a killed demo left behind, and
fail at once, naming the process, when anything else holds a port the demo needs.

A HAProxy of ours runs with the wrapper's path as ``argv[0]`` (``serve_app.local.ingress``)
under a Ray worker, below a raylet. One with no raylet among its ancestors outlived its
Ray (the demo was SIGKILLed before the parent-death signal existed, or its worker was
slow to notice the raylet's death) and still answers 503 on the demo's port: nothing
else will end it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.config import AppConfig
from serve_app.local.ingress import WRAPPER_FOLDER, WRAPPER_PREFIX

RAY_NODE_NAMES = ("raylet",)
"""Process names whose descendants belong to a running Ray node."""

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Holder:
    """A process listening on a port: ``pid`` None when it belongs to another user."""

    port: int
    pid: int | None
    name: str

    def describe(self) -> str:
        """``pid 123 (haproxy)``, or what is known of another user's process."""
        if self.pid is None:
            return "a process of another user (run `sudo ss -ltnp` to name it)"
        return f"pid {self.pid} ({self.name})"


class PortInUse(RuntimeError):
    """A port the demo needs is held by a process that is not a stale demo HAProxy."""

    def __init__(self, message: str, holders: list[Holder]):
        super().__init__(message, holders)
        self.holders = holders

    def __str__(self) -> str:
        return str(self.args[0])


def demo_ports(
    app: AppConfig, dashboard_port: int | None = None, metrics_port: int | None = None
) -> dict[int, str]:
    """The TCP ports a demo of ``app`` binds on ``app.http.host``, by port, each with
    the setting that chose it (for the message)."""
    ports = {app.http.port: "http.port"}
    if app.http.ingress == "haproxy" and app.http.admin_host is not None:
        stats, prometheus = app.http.admin_ports
        ports |= {stats: "http.admin_ports[0] (HAProxy stats)"}
        ports |= {prometheus: "http.admin_ports[1] (HAProxy metrics)"}
    if app.grpc.enabled:
        ports |= {app.grpc.port: "grpc.port"}
    if dashboard_port is not None:
        ports |= {dashboard_port: "--dashboard-port"}
    if metrics_port is not None:
        ports |= {metrics_port: "--metrics-port"}
    return ports


def _listeners() -> list[Any]:
    import psutil

    return list(psutil.net_connections(kind="inet"))


def _process_name(pid: int | None) -> str:
    import psutil

    if pid is None:
        return "?"
    try:
        return str(psutil.Process(pid).name())
    except psutil.Error:
        return "gone"


def holders(
    ports: Iterable[int],
    host: str,
    connections: Callable[[], list[Any]] = _listeners,
    name_of: Callable[[int | None], str] = _process_name,
) -> list[Holder]:
    """Who listens on ``ports`` where a bind to ``host`` would collide (the same
    address, or a wildcard on either side), sorted by port.

    Args:
        connections: psutil-style connections (``status``, ``laddr``, ``pid``).
        name_of: A process's name by pid.
    """
    wanted = set(ports)
    found = set()
    for c in connections():
        if c.status != "LISTEN" or c.laddr.port not in wanted:
            continue
        if host in WILDCARD_HOSTS or c.laddr.ip in WILDCARD_HOSTS or c.laddr.ip == host:
            found.add((c.laddr.port, c.pid))
    return [Holder(port, pid, name_of(pid)) for port, pid in sorted(found, key=str)]


def check_ports_free(
    ports: dict[int, str],
    host: str,
    connections: Callable[[], list[Any]] = _listeners,
    name_of: Callable[[int | None], str] = _process_name,
) -> None:
    """Raise ``PortInUse`` naming each held port, its setting and its holder.

    Args:
        ports: Port -> the setting that chose it (``demo_ports``).
        host: The address the demo binds.
    """
    held = holders(ports, host, connections, name_of)
    if held:
        lines = [f"port {h.port} ({ports[h.port]}) is in use by {h.describe()}" for h in held]
        raise PortInUse("; ".join(lines) + ": stop it, or choose another port in the config", held)


def wrapper_folder() -> Path:
    """Where ``serve_app.local.ingress`` writes its HAProxy wrappers."""
    return Path(tempfile.gettempdir()) / WRAPPER_FOLDER


def is_our_haproxy(cmdline: list[str], folder: Path) -> bool:
    """Whether a command line is a HAProxy started through one of our wrappers."""
    if not cmdline:
        return False
    argv0 = Path(cmdline[0])
    return argv0.parent == folder and argv0.name.startswith(WRAPPER_PREFIX)


def under_ray_node(process: Any) -> bool:
    """Whether a raylet is among the psutil process's ancestors."""
    import psutil

    try:
        return any(p.name() in RAY_NODE_NAMES for p in process.parents())
    except psutil.Error:
        return False


def stale_haproxies(folder: Path | None = None) -> list[Any]:
    """Our HAProxy processes (this user's, by ``argv[0]``) with no Ray node above them."""
    import psutil

    folder = folder or wrapper_folder()
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if is_our_haproxy(p.info["cmdline"] or [], folder) and not under_ray_node(p):
            found.append(p)
    return found


def end_stale_haproxies(say: Callable[[str], None], folder: Path | None = None) -> list[int]:
    """End the HAProxy processes a previous demo left behind, telling ``say`` about each;
    returns their pids."""
    import psutil

    from serve_app.local.cluster import terminate_processes

    stale = stale_haproxies(folder)
    for p in stale:
        try:
            ports = sorted({c.laddr.port for c in p.net_connections(kind="inet")})
        except psutil.Error:
            ports = []
        say(f"ending pid {p.pid}: a HAProxy a previous demo left running (ports {ports})")
    terminate_processes(stale, timeout_s=3.0)
    return [p.pid for p in stale]
