"""A RabbitMQ server for one test module: Debian's ``rabbitmq-server`` on loopback with
the management plugin (the consumers' autoscaling policy reads queue depths from its
HTTP API), its files in a temporary folder. Tests skip where it is not installed."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

SKIP_REASON = (
    "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server; .ci/run "
    "installs it where it runs as root); the Redis broker is tested in test_jobs.py"
)


def available() -> bool:
    """Whether Debian's ``rabbitmq-server`` is on this machine."""
    return shutil.which("rabbitmq-server") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RabbitMQ:
    """``rabbitmq-server`` on 127.0.0.1 (AMQP and management on free ports), its files in
    a folder of its own under the system's temporary directory: as root, Debian's
    wrapper runs it as the ``rabbitmq`` user, which cannot enter pytest's private
    folders."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="serve-app-rabbitmq-"))
        self.port = _free_port()
        self.management_port = _free_port()
        self._dist_port = _free_port()
        self.node = f"serveapp{self.port}@localhost"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The AMQP URL (guest may connect from loopback only)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def management_url(self) -> str:
        """The management API's base URL."""
        return f"http://guest:guest@127.0.0.1:{self.management_port}/api/"

    def start(self, timeout_s: float = 90.0) -> None:
        """Start it and wait for its management API."""
        f = self.folder
        for sub in ("log", "mnesia"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        (f / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
        )
        (f / "enabled_plugins").write_text("[rabbitmq_management].\n")
        if os.geteuid() == 0:  # Debian's wrapper drops root for the rabbitmq user
            user = pwd.getpwnam("rabbitmq")
            for p in [f, *f.rglob("*")]:
                os.chown(p, user.pw_uid, user.pw_gid)
        env = os.environ | {
            "RABBITMQ_CONFIG_FILE": str(f / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(f / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(f / "mnesia"),
            "RABBITMQ_LOG_BASE": str(f / "log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(f / "feature_flags"),
            "RABBITMQ_PID_FILE": str(f / "pid"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self._process = subprocess.Popen(
            ["rabbitmq-server"],
            env=env,
            stdout=(f / "out.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline_s = time.monotonic() + timeout_s
        while time.monotonic() < deadline_s:
            if self._process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited; see {f / 'out.log'}")
            try:
                r = httpx.get(f"{self.management_url}overview", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"rabbitmq-server not up in {timeout_s:.0f} s; see {f / 'out.log'}")

    def queue_messages(self, queue: str) -> int:
        """Messages in ``queue`` as the management API reports them (0 if absent)."""
        r = httpx.get(f"{self.management_url}queues/%2F/{queue}", timeout=5)
        return int(r.json().get("messages", 0)) if r.status_code == 200 else 0

    def _processes(self) -> list[psutil.Process]:
        """This server's processes (the Erlang VM and its epmd run as another user and
        leave the wrapper's process group): those whose environment names our node."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("RABBITMQ_NODENAME") == self.node:
                    found.append(p)
            except psutil.Error:
                continue
        return found

    def stop(self) -> None:
        """Stop the server and its Erlang processes, then remove its files."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        procs = self._processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)
